"""Issue 12: no silent loss, no hang, no green run that embedded nothing.

Every input here is built by the test; every case asserts the exit code, the message a user sees,
and the manifest's counts against the rows on disk (or that no manifest exists).
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.run import main
from tests_support import PROJECT_ROOT, TWO_WORKER_PROCESSES, descendants, refused_storage, run_pipeline, start_pipeline
from transforms.io import fileio
from transforms.results import MANIFEST_NAME, FailedRunError, read_embeddings, read_errors, read_manifest
from transforms.sinks.folder import RUNNING_NAME
from transforms.sinks.manifest import failure_verdict

_ENV = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))


def _jsonl(path: pathlib.Path, n: int, field: str = "text", bad_every: int = 0) -> pathlib.Path:
    with open(path, "w") as f:
        for i in range(n):
            if bad_every and i % bad_every == 0:
                f.write("{not json\n")
            else:
                f.write(json.dumps({"id": f"r{i}", field: f"good film number {i}"}) + "\n")
    return path


def _rows(out: pathlib.Path, folder: str) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (out / folder).glob("*.parquet"))


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---- failure budget -------------------------------------------------------------------------


def test_a_run_that_embeds_nothing_fails_loudly_with_the_reason(tmp_path, tiny_text_model, capsys):
    data = tmp_path / "in.jsonl"  # the run asks for `body`, which every record has, null (a field no record has stops the launch)
    data.write_text("".join(json.dumps({"id": f"r{i}", "text": f"good film {i}", "body": None}) + "\n" for i in range(40)))
    out = tmp_path / "out"
    code = main(["--output", str(out), "--text-input", str(data), "--text-model", str(tiny_text_model), "--text-field", "body"])
    captured = capsys.readouterr()
    assert code == 1
    [line] = _error_lines(captured.err)
    assert "40 of 40 records failed" in line and "--max-failed-fraction" in line
    assert "FAILED" in captured.out and "InvalidTextField" in captured.out and "'r0'" in captured.out
    assert "'body'" in captured.out  # the example's reason names the missing field
    manifest = read_manifest(str(out), allow_failed=True)
    assert manifest["status"] == "failed" and "text" in manifest["failures"]
    [reason] = manifest["top_errors"]["text"]
    assert reason["count"] == 40 and reason["error_type"] == "InvalidTextField" and reason["example_id"] == "r0"
    counts = manifest["counts"]["text"]
    assert counts["read"] == 40 and counts["failed"] == 40 == _rows(out, "errors") and counts["embedded"] == 0
    with pytest.raises(FailedRunError, match="allow_failed"):
        read_embeddings(str(out), "text")
    assert read_embeddings(str(out), "text", allow_failed=True).num_rows == 0
    assert read_errors(str(out)).num_rows == 40  # the dead letters of a failed run stay readable


def test_a_finished_run_whose_manifest_cannot_be_read_back_fails(tmp_path, tiny_text_model, capsys, monkeypatch):
    # The storage goes away between the pipeline's end and the launcher's read-back of the manifest
    # (fault injected at that one call, with the error the storage layer raises): exit 1, not 0.
    import pipeline.run as run_module

    def storage_gone(output, allow_failed=False):
        raise fileio.StorageUnavailable(f"storage unreachable: {output}/_MANIFEST.json: connection refused")

    monkeypatch.setattr(run_module, "read_manifest", storage_gone)
    data = _jsonl(tmp_path / "in.jsonl", 5)
    code = main(["--output", str(tmp_path / "out"), "--text-input", str(data), "--text-model", str(tiny_text_model)])
    captured = capsys.readouterr()
    assert code == 1
    [line] = _error_lines(captured.err)
    assert "storage unreachable" in line and "_MANIFEST.json" in line
    assert "modality" not in captured.out  # no summary table of counts that were never read


def test_under_the_budget_the_run_passes_and_still_prints_the_top_reasons(tmp_path, tiny_text_model, capsys):
    data = _jsonl(tmp_path / "in.jsonl", 50, bad_every=25)  # 2 malformed lines of 50: 4 %
    out = tmp_path / "out"
    argv = ["--output", str(out), "--text-input", str(data), "--text-model", str(tiny_text_model)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert not _error_lines(captured.err)
    assert "top reasons (text):" in captured.out and "2 x" in captured.out
    manifest = read_manifest(str(out))
    assert manifest["status"] == "complete" and manifest["failures"] == {}
    assert manifest["counts"]["text"]["embedded"] == 48 == _rows(out, "text")
    assert manifest["counts"]["text"]["failed"] == 2 == _rows(out, "errors")
    # the same input with a count budget of 1 fails
    assert main(argv + ["--max-failed", "1"]) == 1
    assert "more than --max-failed 1" in capsys.readouterr().err
    # and a per-modality fraction below 4 % fails too
    assert main(argv + ["--max-failed-fraction", "text=0.03"]) == 1
    assert "more than --max-failed-fraction 0.03" in capsys.readouterr().err


def test_failure_verdict_rules():
    ok = {"read": 10, "embedded": 9, "failed": 1, "skipped": 0, "balanced": True}
    assert failure_verdict({"text": ok}, {"text": 0.1}) == {}
    assert "more than --max-failed-fraction 0.05" in failure_verdict({"text": ok}, {"text": 0.05})["text"]
    assert "no record was read" in failure_verdict({"image": dict(ok, read=0, embedded=0, failed=0)}, {})["image"]
    assert "do not add up" in failure_verdict({"text": dict(ok, balanced=False)}, {})["text"]
    everything_skipped = {"read": 5, "embedded": 0, "failed": 0, "skipped": 5, "balanced": True}
    assert failure_verdict({"text": everything_skipped}, {"text": 0.1}) == {}  # an incremental run with nothing new
    lines = {"lines": 10, "record_lines": 9, "blank_lines": 0, "header_lines": 0, "continuation_lines": 0}
    lines.update(rows=0, record_rows=0, unaccounted_files=1, balanced=False, unaccounted=["a.jsonl: 10 lines, 9 accounted for"])
    verdict = failure_verdict({"text": ok}, {"text": 0.5}, accounting={"text": lines})["text"]
    assert "lines do not reconcile (1 file(s)): a.jsonl: 10 lines, 9 accounted for" in verdict  # issue 19
    assert failure_verdict({"text": ok}, {"text": 0.5}, accounting={"text": dict(lines, balanced=True)}) == {}


# ---- arguments ------------------------------------------------------------------------------


def test_an_unquoted_glob_expanded_by_the_shell_is_an_error(tmp_path, tiny_image_model, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.JPEG")
    expanded = sorted(str(p) for p in folder.glob("*.JPEG"))  # what the shell passes for photos/*.JPEG
    out = tmp_path / "out"
    code = main(["--output", str(out), "--image-input", *expanded, "--image-model", str(tiny_image_model)])
    assert code == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert expanded[1] in line and "--image-input" in line and "quote" in line and f"'{folder}/*.JPEG'" in line
    assert not out.exists()


# ---- one run per output folder --------------------------------------------------------------


def test_a_second_run_into_the_same_folder_is_refused_and_the_first_finishes(tmp_path, tiny_text_model, capsys):
    data = _jsonl(tmp_path / "big.jsonl", 150_000)
    out = tmp_path / "out"
    args = ["--output", out, "--text-input", data, "--text-model", tiny_text_model]
    first = start_pipeline("run", *args, "--run-id", "first-run", env=_ENV)
    try:
        deadline = time.time() + 120
        while not (out / RUNNING_NAME).exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (out / RUNNING_NAME).exists(), "the first run never claimed the folder"
        code = main([str(a) for a in args] + ["--run-id", "second-run"])
        err = capsys.readouterr().err
        assert first.poll() is None, "the first run ended before the second one started: the test proved nothing"
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert code == 2
    [line] = _error_lines(err)
    assert "first-run" in line and RUNNING_NAME in line and "--force-unlock" in line
    assert first.returncode == 0, stderr[-2000:]
    manifest = read_manifest(str(out))
    assert manifest["run_id"] == "first-run"
    assert manifest["counts"]["text"]["embedded"] == 150_000 == _rows(out, "text")
    assert not list(out.rglob("beam-temp-*")), "a temp file was left behind"
    assert not (out / RUNNING_NAME).exists(), "the finished run did not free the folder"


def test_a_stale_marker_is_replaced_and_a_foreign_one_needs_force_unlock(tmp_path, tiny_text_model, capsys):
    data = _jsonl(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that surely is not running any more
    marker = out / RUNNING_NAME
    marker.write_text(json.dumps({"run_id": "crashed", "host": socket.gethostname(), "pid": dead.pid}))
    argv = ["--output", str(out), "--text-input", str(data), "--text-model", str(tiny_text_model)]
    assert main(argv) == 0 and not marker.exists()
    marker.write_text(json.dumps({"run_id": "elsewhere-run", "host": "another-machine", "pid": 1}))
    assert main(argv) == 2
    assert "elsewhere-run" in capsys.readouterr().err and marker.exists()
    assert main(argv + ["--force-unlock"]) == 0
    assert not marker.exists() and read_manifest(str(out))["counts"]["text"]["embedded"] == 5


# ---- one-line messages ----------------------------------------------------------------------


def test_a_truncated_keras_file_is_called_truncated(tmp_path, tiny_text_model, capsys):
    cut = tmp_path / "cut.keras"
    cut.write_bytes(tiny_text_model.read_bytes()[: tiny_text_model.stat().st_size // 2])
    data = _jsonl(tmp_path / "in.jsonl", 3)
    assert main(["--output", str(tmp_path / "out"), "--text-input", str(data), "--text-model", str(cut)]) == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert "--text-model" in line and "cut.keras" in line and "not a complete .keras file" in line
    assert "not found" not in line.lower()


@pytest.mark.parametrize("flag", ["--text-input", "--output", "--text-model"])
def test_an_http_uri_is_named_as_unsupported(tmp_path, tiny_text_model, capsys, flag):
    values = {
        "--output": str(tmp_path / "out"),
        "--text-input": str(_jsonl(tmp_path / "in.jsonl", 2)),
        "--text-model": str(tiny_text_model),
    }
    values[flag] = "http://example.com/thing.keras" if flag == "--text-model" else "http://example.com/data"
    assert main([a for k, v in values.items() for a in (k, v)]) == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {flag} 'http://example.com/") and "http:// is not supported" in line
    assert "pip install" not in line


def test_weights_for_another_alpha_blame_the_weights_and_alpha(tmp_path, shared_data, capsys):
    weights = shared_data / "weights" / "mobilenet_2_5_224_tf_no_top.h5"  # made for alpha 0.25
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    code = main(
        [
            "--output",
            str(tmp_path / "out"),
            "--image-input",
            str(tmp_path / "a.png"),
            "--image-model",
            "MobileNet",
            "--image-alpha",
            "0.5",
            "--image-size",
            "96",
            "--image-weights",
            str(weights),
        ]
    )
    assert code == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert line.startswith("error: --image-weights") and "--image-alpha 0.5" in line and "mobilenet_2_5_224" in line
    assert "--image-model" not in line.split(":")[1]


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line(tmp_path, tiny_text_model):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs a small tmpfs to fill (mount as root); none could be mounted here")
    try:
        data = _jsonl(tmp_path / "in.jsonl", 20_000)
        done = run_pipeline(
            "run", "--output", small / "out", "--text-input", data, "--text-model", tiny_text_model, env=_ENV, timeout=300
        )
        assert done.returncode == 1
        [line] = _error_lines(done.stderr)
        assert "no space left on device" in line and "Traceback" not in done.stderr
        assert not (small / "out" / MANIFEST_NAME).exists()
    finally:
        subprocess.run(["umount", str(small)], check=False)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, code, words", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted (Ctrl-C)")]
)
def test_a_signal_ends_a_multi_process_run_with_one_line_and_no_worker_left(tmp_path, tiny_text_model, signum, code, words):
    data = _jsonl(tmp_path / "big.jsonl", 300_000)
    out = tmp_path / "out"
    args = ["--output", out, "--text-input", data, "--text-model", tiny_text_model, *TWO_WORKER_PROCESSES]
    process = start_pipeline("run", *args, env=_ENV, start_new_session=True)
    try:
        workers: set[int] = set()
        deadline = time.time() + 180
        while len(workers) < 2 and process.poll() is None and time.time() < deadline:
            workers = {
                p for p in descendants(process.pid) if b"sdk_worker_main" in pathlib.Path(f"/proc/{p}/cmdline").read_bytes()
            }
            time.sleep(0.1)
        assert workers, "no worker process started"
        time.sleep(2)
        os.kill(process.pid, signum)  # the main process only: its workers must not outlive it
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == code
    [line] = _error_lines(stderr)
    assert words in line and "rerun" in line
    time.sleep(1)
    assert not {w for w in workers if _running(w)}, "worker processes outlived the run"
    assert not (out / MANIFEST_NAME).exists() and not (out / RUNNING_NAME).exists()


# ---- storage outage -------------------------------------------------------------------------


@pytest.mark.gcs
def test_an_unreachable_storage_raises_storage_unavailable_not_a_record_error(tmp_path):
    with refused_storage(timeout=2):
        with pytest.raises(fileio.StorageUnavailable, match="storage unreachable: gs://b/x.png: connection refused"):
            fileio.read_bytes("gs://b/x.png")
        # right after, other reads give up at once instead of waiting again
        started = time.monotonic()
        with pytest.raises(fileio.StorageUnavailable, match="not tried"):
            fileio.read_bytes("gs://b/y.png")
        assert time.monotonic() - started < 1


@pytest.mark.gcs
@pytest.mark.parametrize("name", ["reviews.jsonl", "reviews.parquet", "manifest.csv"])
def test_text_and_manifest_reads_fail_on_a_storage_outage_instead_of_dead_lettering_the_file(tmp_path, name):
    """A text file or manifest on gs:// whose storage is unreachable stops the run (StorageUnavailable
    is raised out of the reader), never becomes one quiet dead letter per file under the budget."""
    from apache_beam.io.restriction_trackers import OffsetRestrictionTracker

    from transforms.io.image_read import ReadImageManifestFn
    from transforms.io.splits import FileRestrictions, plan_file
    from transforms.io.text_read import ReadTextFileFn

    with refused_storage(timeout=2):
        path = f"gs://outage/{name}"
        with pytest.raises(Exception) as raised:
            plan = plan_file(path, path, 10_000)  # a Parquet footer is read here
            fn = ReadImageManifestFn() if name.endswith(".csv") else ReadTextFileFn()
            tracker = OffsetRestrictionTracker(FileRestrictions().initial_restriction(plan))
            outputs = list(fn.process(plan, tracker))
            pytest.fail(f"the read ended normally with {outputs!r}")
        assert fileio.is_transient_storage_error(raised.value), repr(raised.value)


_SERVER = """
import logging, sys
logging.disable(logging.CRITICAL)
from gcp_storage_emulator.server import create_server
server = create_server("127.0.0.1", 0, in_memory=True, default_bucket="outage")
server.start()
print(server._api._httpd.server_address[1], flush=True)
sys.stdin.read()
"""


@pytest.mark.gcs
@pytest.mark.slow
@pytest.mark.parametrize("output_on", ["local", "gs"])
def test_storage_killed_mid_run_fails_the_run_in_bounded_time(tmp_path, tiny_image_model, output_on):
    """A private emulator (the shared one serves other tests) holds the images, then dies mid-run."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from gcs_emulator import _fake_credentials

    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        endpoint = f"http://127.0.0.1:{int(server.stdout.readline())}"
        bucket = storage.Client(
            project="p", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
        ).bucket("outage")
        rng = np.random.RandomState(0)
        uris = []
        for i in range(24):
            path = tmp_path / f"{i}.png"
            Image.fromarray((rng.rand(32, 32, 3) * 255).astype("uint8")).save(path)
            bucket.blob(f"imgs/{i}.png").upload_from_filename(str(path))
            uris.append(f"gs://outage/imgs/{i}.png")
        listing = tmp_path / "list.csv"
        listing.write_text("uri\n" + "\n".join(uris) + "\n")
        out = tmp_path / "out" if output_on == "local" else "gs://outage/out"
        env = dict(
            _ENV,
            STORAGE_EMULATOR_HOST=endpoint,
            GOOGLE_CLOUD_PROJECT="p",
            GOOGLE_APPLICATION_CREDENTIALS=_fake_credentials(str(tmp_path)),
        )
        inputs = ["--image-input", listing, "--image-model", tiny_image_model]
        run = start_pipeline("run", "--output", out, *inputs, "--image-batch-size", "2", "--storage-timeout", "10", env=env)
        # kill storage once the run is under way: the pipeline created its local temp folder, or
        # (gs:// output) the run claimed its output folder
        deadline = time.time() + 120
        while run.poll() is None and time.time() < deadline:
            if output_on == "local" and (tmp_path / "out" / "image").exists():
                break
            if output_on == "gs" and bucket.get_blob(f"out/{RUNNING_NAME}") is not None:
                break  # at once: on an idle machine the whole run can finish within a second or two
            time.sleep(0.05)
        assert run.poll() is None, "the run ended before storage went away: the test proved nothing"
        server.kill()
        server.wait()
        try:
            _, stderr = run.communicate(timeout=150)  # bounded: --storage-timeout 10 plus start-up, never a hang
        except subprocess.TimeoutExpired:
            run.kill()
            raise AssertionError("the run hung after its storage went away") from None
    finally:
        if server.poll() is None:
            server.kill()
    assert run.returncode == 1
    [line] = _error_lines(stderr)
    assert "storage unreachable" in line and "--storage-timeout" in line and "Traceback" not in stderr
    if output_on == "local":
        assert not (tmp_path / "out" / MANIFEST_NAME).exists() and not (tmp_path / "out" / RUNNING_NAME).exists()
        assert not list((tmp_path / "out").rglob("*.parquet")), "records were written as if storage were fine"


def test_the_tools_refuse_a_failed_run_in_one_line(tmp_path, tiny_text_model, capsys):
    data = _jsonl(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out"
    assert (
        main(["--output", str(out), "--text-input", str(data), "--text-model", str(tiny_text_model), "--max-text-bytes", "4"])
        == 1
    )
    capsys.readouterr()
    from pipeline import cli

    assert cli.main(["neighbors", "--embeddings", str(out), "--id", "r1", "-k", "2"]) != 0
    err = capsys.readouterr().err
    assert "failed" in err and "--allow-failed" in err and "allow_failed=True" not in err and "Traceback" not in err


def test_workers_take_the_storage_timeout_from_the_job_options(monkeypatch):
    """On Dataflow the only way --storage-timeout reaches a worker is the job's options, which Beam's
    SDK harness hands to FileSystems before any bundle runs."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    previous_options, previous_timeout = FileSystems._pipeline_options, fileio.storage_timeout()
    monkeypatch.delenv(fileio.STORAGE_TIMEOUT_ENV, raising=False)
    try:
        FileSystems.set_options(PipelineOptions.from_dictionary({"storage_timeout": 7, "output": "gs://b/o"}))
        assert fileio.bound_storage_retries() == 7.0
        from google.cloud.storage.retry import DEFAULT_RETRY

        assert DEFAULT_RETRY.timeout == 7.0
        FileSystems._pipeline_options = None
        assert fileio.bound_storage_retries() == fileio.DEFAULT_STORAGE_TIMEOUT
    finally:
        FileSystems._pipeline_options = previous_options
        fileio.bound_storage_retries(previous_timeout)


def test_ctrl_c_during_start_up_imports_is_one_line_and_exit_130(tmp_path):
    """SIGINT while the CLI is still importing its libraries: one `error:` line, exit 130."""
    args = ["--output", tmp_path / "out", "--text-input", tmp_path / "none.jsonl", "--text-model", tmp_path / "none.keras"]
    process = start_pipeline("run", *args, stdout=None)
    time.sleep(0.5)  # inside `import apache_beam` / TensorFlow, well before the run starts
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("error:"), stderr


def test_a_batch_answer_lost_with_the_storage_is_reported_as_storage_unreachable():
    """Beam's gcsio batch copy/delete reads `response.status_code` of an answer that never came when
    the endpoint died mid-batch (seen when the emulator was killed during the sinks' finalisation)."""
    from pipeline.run import failure_message

    try:
        raise AttributeError("'NoneType' object has no attribute 'status_code' [while running 'WriteManifest']")
    except AttributeError as exc:
        line = failure_message(exc)
    assert line.startswith("storage unreachable in step 'WriteManifest'") and "--storage-timeout" in line
