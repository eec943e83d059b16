"""Issue 3, sections 4-5: repeatable and atomic output, loopback-only local workers, safe loading."""

import json
import os
import pathlib
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from PIL import Image

from pipeline.run import main, run
from tests_support import PROJECT_ROOT, TWO_WORKER_PROCESSES, descendants, run_pipeline, start_pipeline
from transforms.results import MANIFEST_NAME, read_embeddings


def _listening_sockets(root_pid: int) -> set[str]:
    """Local addresses of the TCP sockets in LISTEN state owned by `root_pid` or its descendants."""
    family = {root_pid} | descendants(root_pid)
    inodes = set()
    for pid in family:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and parts[9] in inodes:
                    found.add(parts[1])
    return found


def _is_loopback(hex_address: str) -> bool:
    host = hex_address.split(":")[0]
    if len(host) == 8:  # IPv4, little-endian: 127.x.x.x ends in 7F
        return host.endswith("7F")
    return host in ("00000000000000000000000001000000",) or host.startswith("0000000000000000FFFF0000") and host.endswith("7F")


def _inputs(root: pathlib.Path) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "a.jsonl", "w") as f:
        for i in range(60):
            f.write(json.dumps({"id": f"r{i}", "text": f"good film {i}" if i % 3 else f"awful plot {i}"}) + "\n")
    images = root / "img"
    images.mkdir()
    rng = np.random.RandomState(3)
    for i in range(12):
        Image.fromarray((rng.rand(48, 40, 3) * 255).astype("uint8")).save(images / f"{i}.png")
    return ["--text-input", str(root / "a.jsonl"), "--image-input", str(images / "*.png")]


def _by_id(out: pathlib.Path, modality: str) -> dict:
    table = read_embeddings(str(out), modality)
    return dict(
        zip(table.column("id").to_pylist(), (np.array(v, dtype=np.float32) for v in table.column("embedding").to_pylist()))
    )


@pytest.mark.slow
def test_two_workers_give_bit_identical_embeddings_and_listen_on_loopback_only(tmp_path, tiny_text_model, tiny_image_model):
    inputs = _inputs(tmp_path / "in")
    models = ["--text-model", str(tiny_text_model), "--image-model", str(tiny_image_model)]
    run(["--output", str(tmp_path / "one")] + inputs + models)
    run(["--output", str(tmp_path / "again")] + inputs + models)

    seen, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            seen.update(_listening_sockets(os.getpid()))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run(["--output", str(tmp_path / "two"), *TWO_WORKER_PROCESSES] + inputs + models)
    finally:
        stop.set()
        watcher.join()
    assert seen, "the multi-processing run opened no server at all: the check saw nothing"
    exposed = {a for a in seen if not _is_loopback(a)}
    assert not exposed, f"servers listening beyond loopback: {exposed}"
    for modality in ("text", "image"):
        one, again, two = (_by_id(tmp_path / d, modality) for d in ("one", "again", "two"))
        assert one.keys() == two.keys() == again.keys()
        for key in one:
            assert one[key].tobytes() == again[key].tobytes() == two[key].tobytes(), key


@pytest.mark.slow
def test_a_killed_run_leaves_no_manifest_and_a_rerun_completes_exactly(tmp_path, tiny_text_model):
    data = tmp_path / "big.jsonl"
    with open(data, "w") as f:
        for i in range(200_000):
            f.write(json.dumps({"id": f"r{i}", "text": f"good film number {i}"}) + "\n")
    out = tmp_path / "out"
    argv = ["--output", str(out), "--text-input", str(data), "--text-model", str(tiny_text_model)]
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    process = start_pipeline("run", *argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any((out / "text").glob("beam-temp-*")):
        time.sleep(0.05)  # wait until Parquet is being written, then kill the whole process group
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert any((out / "text").glob("beam-temp-*")), "the run was killed before it wrote anything"
    assert not (out / MANIFEST_NAME).exists()
    with pytest.raises(Exception, match="did not finish"):
        read_embeddings(str(out), "text")
    result = run(argv)
    ids = read_embeddings(str(out), "text").column("id").to_pylist()
    assert len(ids) == 200_000 and len(set(ids)) == 200_000
    assert result["counts"]["text"]["embedded"] == 200_000
    assert not list((out / "text").glob("beam-temp-*")), "temp files of the killed run survived"


@pytest.mark.slow
def test_ctrl_c_to_the_whole_process_group_prints_one_line_and_nothing_after_it(tmp_path, tiny_text_model):
    """Issue 19, case 10: a Ctrl-C in a terminal reaches the launcher and its worker processes alike
    (the foreground process group). It ends the run with the launcher's one line, exit 130: no
    KeyboardInterrupt traceback of a worker, no gRPC traceback of the launcher after it."""
    data = tmp_path / "big.jsonl"
    with open(data, "w") as f:
        for i in range(600_000):
            f.write(json.dumps({"id": f"r{i}", "text": f"good film number {i}"}) + "\n")
    out = tmp_path / "out"
    argv = ["--output", out, "--text-input", data, "--text-model", tiny_text_model, *TWO_WORKER_PROCESSES]
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    process = start_pipeline("run", *argv, env=env, start_new_session=True)
    try:
        workers: set[int] = set()
        deadline = time.time() + 180
        while process.poll() is None and time.time() < deadline and not (len(workers) >= 2 and any(out.glob("text/beam-temp-*"))):
            workers = {
                p for p in descendants(process.pid) if b"sdk_worker_main" in pathlib.Path(f"/proc/{p}/cmdline").read_bytes()
            }
            time.sleep(0.1)
        assert len(workers) >= 2 and process.poll() is None, "the workers never got to work"
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    after = stderr[stderr.index("error: interrupted (Ctrl-C)") :]
    assert after.strip().splitlines() == [after.strip()], f"output after the one line: {after!r}"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    deadline = time.time() + 30
    while {w for w in workers if _alive(w)} and time.time() < deadline:
        time.sleep(0.1)
    assert not {w for w in workers if _alive(w)}, "worker processes outlived the run"
    assert not (out / MANIFEST_NAME).exists()


def _alive(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _lambda_model(path: pathlib.Path) -> pathlib.Path:
    import keras

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="custom_code")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    out = keras.layers.Dense(2, name="classes")(x)
    keras.Model(inp, out).save(path)
    return path


def test_models_with_custom_code_need_the_unsafe_flag(tmp_path, capsys):
    model = _lambda_model(tmp_path / "lambda.keras")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "a.png")
    argv = ["--output", str(tmp_path / "out"), "--image-input", str(tmp_path / "a.png"), "--image-model", str(model)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--unsafe-model-loading" in err and "lambda.keras" in err
    assert not (tmp_path / "out").exists()
    result = run(argv + ["--unsafe-model-loading"])
    assert result["counts"]["image"]["embedded"] == 1


def test_credentials_never_reach_the_logs(tmp_path, tiny_text_model):
    secret = "ya29.SECRET-TOKEN-do-not-print"
    credentials = tmp_path / "creds.json"
    credentials.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "id",
                "client_secret": "s3cr3t-client",
                "refresh_token": "r3fresh",
                "token": secret,
            }
        )
    )
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"id": "a", "text": "good"}) + "\n")
    env = dict(os.environ, GOOGLE_APPLICATION_CREDENTIALS=str(credentials), PYTHONPATH=str(PROJECT_ROOT))
    done = run_pipeline(
        "run",
        "--verbose",
        "--output",
        tmp_path / "out",
        "--text-input",
        data,
        "--text-model",
        tiny_text_model,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    logs = done.stdout + done.stderr + (tmp_path / "out" / MANIFEST_NAME).read_text()
    for value in (secret, "s3cr3t-client", "r3fresh"):
        assert value not in logs
    assert "Run " in done.stdout  # the summary was printed, so the logs were really captured
