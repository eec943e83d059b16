"""Issue 19, cases 5, 10 and 11: inputs and flags a hostile (or unlucky) user gives the job.

* Case 5: a FIFO, socket or device among the inputs is one `NotARegularFile` dead letter, at once,
  never opened (a FIFO used to hang the run forever, silently).
* Case 10: a folder as a text input is a launch error (an image folder is a folder of images since
  issue 22: tests/test_image_folders.py); a path with glob characters that names an
  existing file is that file (refused as ambiguous when the glob also matches other files); storage
  already down at launch fails within --storage-timeout with exit 1; Beam flag values that Beam
  would crash on are exit 2 naming the flag.

* Case 11: OpenVINO's telemetry is off before OpenVINO is imported (nothing written under $HOME).

The runs with special files run in a subprocess: a regression would hang, and the subprocess's
timeout then fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest
from PIL import Image

from pipeline.run import main
from tests_support import PROJECT_ROOT, refused_storage, run_pipeline
from transforms.results import MANIFEST_NAME, read_embeddings, read_errors

_ENV = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))


def _jsonl(path: pathlib.Path, n: int, prefix: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"{prefix}{i}", "text": f"good film {i}"}) + "\n")
    return path


def _png(path: pathlib.Path, shade: int = 7) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 36), (shade, 2 * shade, 3 * shade)).save(path)
    return path


def _special_files(folder: pathlib.Path, suffix: str) -> tuple[dict[str, str], socket.socket]:
    """A FIFO, a listening Unix socket and a symlink to /dev/zero (an endless character device) in
    `folder`; returns {file name: the kind the dead letter must name} and the socket (close it)."""
    os.mkfifo(folder / f"fifo{suffix}")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(folder / f"sock{suffix}"))
    server.listen(1)
    os.symlink("/dev/zero", folder / f"zero{suffix}")
    return {f"fifo{suffix}": "a FIFO", f"sock{suffix}": "a socket", f"zero{suffix}": "a character device"}, server


def _errors_by_id(out: pathlib.Path) -> dict[str, dict]:
    return {row["id"]: row for row in read_errors(str(out)).to_pylist()}


# ---- case 5: only regular files are read ----------------------------------------------------------


@pytest.mark.slow
def test_fifos_sockets_and_devices_among_text_and_images_are_dead_letters_at_once(tmp_path, tiny_text_model, tiny_image_model):
    text, images, out = tmp_path / "text", tmp_path / "images", tmp_path / "out"
    _jsonl(text / "good.jsonl", 5, "t")
    _png(images / "good.png")
    text_kinds, text_socket = _special_files(text, ".jsonl")
    image_kinds, image_socket = _special_files(images, ".png")
    with text_socket, image_socket:
        done = run_pipeline(
        "run",
            "--output", out,
            "--text-input", f"{text}/*",
            "--text-model", tiny_text_model,
            "--image-input", f"{images}/*",
            "--image-model", tiny_image_model,
            "--max-failed-fraction", "0.9",
            env=_ENV,
            timeout=600,  # a FIFO that is opened blocks forever: this turns a hang into a failure
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["counts"]["text"]["embedded"] == 5 and manifest["counts"]["text"]["failed"] == 3
    assert manifest["counts"]["image"]["embedded"] == 1 and manifest["counts"]["image"]["failed"] == 3
    errors = _errors_by_id(out)
    for name, kind in text_kinds.items():  # a text file's dead letter covers the whole file: `<path id>:*`
        row = errors[f"{name}:*"]
        assert (row["modality"], row["stage"], row["error_type"]) == ("text", "read", "NotARegularFile")
        assert kind in row["message"] and row["source"] == str(text / name)
    for name, kind in image_kinds.items():  # an image's dead letter has the image's own id
        row = errors[name]
        assert (row["modality"], row["stage"], row["error_type"]) == ("image", "read", "NotARegularFile")
        assert kind in row["message"] and row["source"] == str(images / name)
    assert sorted(read_embeddings(str(out), "text").column("id").to_pylist()) == [f"t{i}" for i in range(5)]
    assert read_embeddings(str(out), "image").column("id").to_pylist() == ["good.png"]
    assert os.path.getsize(images / "good.png") > 0 and (text / "fifo.jsonl").exists()  # inputs untouched


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    """`fileio` raises NotARegularFile for a FIFO before opening it: opening a FIFO with no writer
    blocks, so reaching the next line at all shows it was not opened."""
    from transforms.io import fileio
    from transforms.io.splits import plan_file

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(fileio.NotARegularFile, match="is a FIFO"):
        fileio.read_bytes(str(fifo))
    with pytest.raises(fileio.NotARegularFile, match="is a FIFO"):
        fileio.open_input(str(fifo))
    plan = plan_file(str(fifo), str(fifo), 0)
    assert plan.error.startswith("NotARegularFile: ") and plan.unsplittable


# ---- case 10: a folder, glob characters in a file name -------------------------------------------


def test_a_folder_as_a_text_input_is_a_launch_error_suggesting_a_glob(tmp_path, tiny_text_model, capsys):
    folder = tmp_path / "data"
    _jsonl(folder / "a.jsonl", 3, "a")
    _png(folder / "b.png")
    out = tmp_path / "out"
    assert main(["--output", str(out), "--text-input", str(folder), "--text-model", str(tiny_text_model)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --text-input '{folder}': is a folder") and f"'{folder}/**'" in line
    assert not out.exists(), "a launch error must leave --output alone"


def test_a_folder_as_an_image_input_reads_its_images_only(tmp_path, tiny_image_model):
    folder = tmp_path / "data"
    _jsonl(folder / "a.jsonl", 3, "a")  # not an image: not read, not a dead letter
    _png(folder / "b.png")
    out = tmp_path / "out"
    assert main(["--output", str(out), "--image-input", str(folder), "--image-model", str(tiny_image_model)]) == 0
    assert read_embeddings(str(out), "image").column("id").to_pylist() == ["b.png"]
    assert read_errors(str(out)).num_rows == 0


def test_a_path_with_glob_characters_names_the_file_that_exists(tmp_path, tiny_image_model):
    meta = tmp_path / "meta"
    literal = _png(meta / "[x].png", shade=40)
    out = tmp_path / "out"
    assert main(["--output", str(out), "--image-input", str(literal), "--image-model", str(tiny_image_model)]) == 0
    table = read_embeddings(str(out), "image")
    assert table.column("id").to_pylist() == ["[x].png"] and table.column("source").to_pylist() == [str(literal)]


def test_a_path_naming_a_file_and_as_a_glob_other_files_is_refused_as_ambiguous(tmp_path, tiny_image_model, capsys):
    meta = tmp_path / "meta"
    literal = _png(meta / "[x].png", shade=40)
    _png(meta / "x.png", shade=90)  # what the glob `[x]` matches
    out = tmp_path / "out"
    assert main(["--output", str(out), "--image-input", str(literal), "--image-model", str(tiny_image_model)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --image-input '{literal}': ambiguous") and str(meta / "x.png") in line
    assert not out.exists()


# ---- case 10: Beam flag values Beam would crash on -------------------------------------------------


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--direct_num_workers", "-1"], "error: --direct_num_workers -1: must be 0"),
        (["--runner", "Bogus"], "error: --runner 'Bogus': unknown runner"),
    ],
)
def test_beam_flag_values_beam_would_crash_on_are_exit_2_naming_the_flag(tmp_path, tiny_text_model, capsys, flags, words):
    data = _jsonl(tmp_path / "a.jsonl", 3, "a")
    out = tmp_path / "out"
    assert main(["--output", str(out), "--text-input", str(data), "--text-model", str(tiny_text_model), *flags]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(words)
    assert not out.exists()


# ---- case 10: storage already down at launch -------------------------------------------------------


@pytest.mark.gcs
@pytest.mark.parametrize("where", ["input", "output"])
def test_storage_down_at_launch_fails_with_exit_1_naming_the_storage_timeout(tmp_path, tiny_text_model, capsys, where):
    """Nothing listens where gs:// points: the launch's own calls (listing --text-input, the write
    probe of --output) retry for --storage-timeout, not for the 45 s default, and the run ends with
    exit 1 (an outage, not a bad flag) and one line naming the timeout."""
    local_input = str(_jsonl(tmp_path / "a.jsonl", 3, "a"))
    text_input = "gs://down/in/*.jsonl" if where == "input" else local_input
    output = str(tmp_path / "out") if where == "input" else "gs://down/out"
    with refused_storage(timeout=45):
        started = time.monotonic()
        code = main(
            ["--output", output, "--text-input", text_input, "--text-model", str(tiny_text_model), "--storage-timeout", "3"]
        )
        elapsed = time.monotonic() - started
    assert code == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "storage unreachable" in line and "3 s" in line and "--storage-timeout" in line
    assert (
        ("--text-input 'gs://down/in/*.jsonl'" in line)
        if where == "input"
        else line.startswith("error: --output 'gs://down/out'")
    )
    assert not (tmp_path / "out").exists()
    print(f"storage down at launch ({where}): failed after {elapsed:.1f} s with --storage-timeout 3")


# ---- case 11: no telemetry ---------------------------------------------------------------------------

_CONVERT = """
import sys
from transforms.embed.dofns import EmbedImageBatchesFn  # what a Beam worker unpickles (no `import transforms` hook)
from transforms.embed.models import ImageModelSpec
from transforms.records import IMAGE, embedding_schema

assert "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules
spec = ImageModelSpec("MobileNetV3Small", weights="none", image_size=64, batch_size=2, backend="openvino")
fn = EmbedImageBatchesFn(spec, embedding_schema(IMAGE, 1))
fn.setup()  # the worker's setup: the model loads and is converted to OpenVINO (backend "openvino": or it raises)
from openvino.tools.ovc import convert_impl, telemetry_stub

assert convert_impl.tm is telemetry_stub
fn.teardown()
print("converted", sys.modules["openvino"].__version__)
"""


@pytest.mark.slow
def test_openvino_writes_nothing_under_home_when_imported_and_converting(tmp_path):
    """`import openvino` started OpenVINO's telemetry (a client id in ~/intel/openvino_ga_cid, every
    run counted in ~/intel/stats, an event sent) before the job could switch it off. With HOME an
    empty folder, a worker's DoFn setup that loads an image model on the OpenVINO backend (importing
    OpenVINO and converting the network, the job's way) leaves it empty."""
    pytest.importorskip("openvino")
    home = tmp_path / "home"
    home.mkdir()
    env = dict(_ENV, HOME=str(home))
    env.pop("CI", None)  # OpenVINO's own CI check would hide the problem
    done = subprocess.run(
        [sys.executable, "-c", _CONVERT], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and "converted" in done.stdout, done.stderr[-3000:]
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
