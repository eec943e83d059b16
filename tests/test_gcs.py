"""The job with every path on gs://, against a local GCS emulator: same embeddings as a local run."""

import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from gcs_emulator import gcs_emulator  # noqa: F401 - the fixture
from pipeline.run import main, run
from transforms.results import MANIFEST_NAME, read_embeddings, read_errors, read_manifest
from transforms.sinks.folder import RUNNING_NAME

pytestmark = pytest.mark.gcs

MOBILENET_SIZE = 32


def _write_inputs(root: pathlib.Path) -> None:
    """A few text records in two formats, five images, an image manifest with relative uris."""
    text = root / "text"
    text.mkdir(parents=True)
    with open(text / "a.jsonl", "w") as f:
        for i in range(3):
            f.write(json.dumps({"id": f"j{i}", "text": f"good movie {i}", "label": str(i % 2)}) + "\n")
    (text / "b.csv").write_text('id,text,label\nc1,"great acting, awful plot",1\nc2,bad film,0\n')
    # Parquet in three row groups: read group by group with seeks (gs:// included), never whole
    pq.write_table(
        pa.table(
            {
                "id": [f"p{i}" for i in range(6)],
                "text": [f"fine film {i}" for i in range(6)],
                "label": [str(i % 2) for i in range(6)],
            }
        ),
        text / "d.parquet",
        row_group_size=2,
    )
    images = root / "images"
    images.mkdir()
    rng = np.random.RandomState(0)
    for i in range(5):
        pixels = (rng.rand(36 + i, 30, 3) * 255).astype("uint8")
        Image.fromarray(pixels).save(images / (f"img{i}.png" if i % 2 else f"img{i}.jpg"))
    (root / "manifest.csv").write_text(
        "uri,label,key\nimages/img0.jpg,cat,k0\nimages/img3.png,dog,k3\nimages/missing.jpg,cat,k9\n"
    )


def _make_mobilenet_weights(path: pathlib.Path) -> pathlib.Path:
    """Weights for MobileNet(alpha=0.25) at 32 px from another seed than the job's own random init."""
    import keras

    keras.utils.set_random_seed(7)
    network = keras.applications.MobileNet(
        input_shape=(MOBILENET_SIZE, MOBILENET_SIZE, 3), alpha=0.25, include_top=False, pooling="avg", weights=None
    )
    network.save_weights(path)
    return path


def _argv(output: str, data: str, text_model: str, image_model: str) -> list[str]:
    return [
        "--output",
        output,
        "--text-input",
        f"{data}/text/*",
        "--text-model",
        text_model,
        "--image-input",
        f"{data}/images/*",
        "--image-input",
        f"{data}/manifest.csv",
        "--image-id-field",
        "key",
        "--image-model",
        image_model,
        "--passthrough",
        "label",
        "--run-id",
        "same-run",
        "--max-failed-fraction",
        "1",  # the manifest names a missing file on purpose
        "--read-split-bytes",
        "40",  # every file and the manifest in several ranges
    ]


def _weights_argv(output: str, data: str, weights: str) -> list[str]:
    return [
        "--output",
        output,
        "--image-input",
        f"{data}/images/*",
        "--image-model",
        "MobileNet",
        "--image-alpha",
        "0.25",
        "--image-size",
        str(MOBILENET_SIZE),
        "--image-weights",
        weights,
    ]


def _by_id(table: pa.Table, base: str) -> dict:
    """Rows keyed by id, with the run's own folder cut from path-like ids and sources."""
    rows = {}
    for row in table.to_pylist():
        ident = row.pop("id")
        rows[ident.replace(base, "<data>")] = dict(row, source=row["source"].replace(base, "<data>"))
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory, gcs_emulator, tiny_text_model, tiny_image_model):
    """The same inputs and models run twice: all local, and all on gs:// (inputs, models, output)."""
    root = tmp_path_factory.mktemp("gcs-job")
    data = root / "data"
    _write_inputs(data)
    weights = _make_mobilenet_weights(root / "mobilenet.weights.h5")
    gs_data = gcs_emulator.upload_tree(data, "job", "data")
    gs_text = gcs_emulator.upload(tiny_text_model, "job", "models", "text.keras")
    gs_image = gcs_emulator.upload(tiny_image_model, "job", "models", "image.keras")
    gs_weights = gcs_emulator.upload(weights, "job", "models", "mobilenet.weights.h5")
    gs_out, gs_weights_out = gcs_emulator.url("job", "out"), gcs_emulator.url("job", "out-weights")
    gs_manifest = run(_argv(gs_out, gs_data, gs_text, gs_image))
    run(_argv(str(root / "out"), str(data), str(tiny_text_model), str(tiny_image_model)))
    run(_weights_argv(gs_weights_out, gs_data, gs_weights))
    run(_weights_argv(str(root / "out-weights"), str(data), str(weights)))
    return dict(
        root=root,
        data=str(data),
        gs_data=gs_data,
        gs_out=gs_out,
        local_out=str(root / "out"),
        gs_weights_out=gs_weights_out,
        local_weights_out=str(root / "out-weights"),
        weights=weights,
        gs_manifest=gs_manifest,
    )


@pytest.mark.parametrize("modality", ["text", "image"])
def test_embeddings_from_gcs_equal_a_local_run(runs, modality):
    remote = _by_id(read_embeddings(runs["gs_out"], modality), runs["gs_data"])
    local = _by_id(read_embeddings(runs["local_out"], modality), runs["data"])
    assert sorted(remote) == sorted(local)
    assert len(remote) == (11 if modality == "text" else 7)  # images: 5 by the glob + 2 by the manifest
    for ident, row in local.items():
        np.testing.assert_array_equal(np.asarray(remote[ident]["embedding"]), np.asarray(row["embedding"]), err_msg=ident)
        assert remote[ident] == row, ident  # source, content hash, model, passthrough: all the same


def test_manifest_on_gcs_lists_relative_files_and_same_models(runs):
    manifest = read_manifest(runs["gs_out"])
    assert manifest == {k: v for k, v in runs["gs_manifest"].items() if k != "model_loads"}
    assert manifest["run_id"] == "same-run"
    assert manifest["output"] == runs["gs_out"] and manifest["status"] == "complete"
    assert manifest["counts"]["text"] == {"read": 11, "embedded": 11, "failed": 0, "skipped": 0, "balanced": True}
    assert manifest["counts"]["image"] == {"read": 8, "embedded": 7, "failed": 1, "skipped": 0, "balanced": True}
    assert set(manifest["files"]) == {"text", "image", "errors"}
    for folder, paths in manifest["files"].items():
        assert paths and all(p.startswith(folder + "/") and p.endswith(".parquet") for p in paths)
        for path in paths:
            assert FileSystems.exists(f"{runs['gs_out']}/{path}")
    local = read_manifest(runs["local_out"])
    for modality, model in local["models"].items():  # same files: same names, sizes and sha256
        assert {k: v for k, v in manifest["models"][modality].items() if k != "details"} == {
            k: v for k, v in model.items() if k != "details"
        }
    assert manifest["models"]["text"]["details"]["path"] == f"{runs['gs_out'].rsplit('/', 1)[0]}/models/text.keras"
    assert manifest["counts"] == local["counts"]
    assert runs["gs_manifest"]["model_loads"] == {"text_model_loads": 1, "image_model_loads": 1}


def test_missing_image_named_by_a_gcs_manifest_is_a_dead_letter(runs):
    remote = {r["id"]: r for r in read_errors(runs["gs_out"]).to_pylist()}
    local = {r["id"]: r for r in read_errors(runs["local_out"]).to_pylist()}
    assert set(remote) == set(local) == {"k9"}
    assert remote["k9"]["stage"] == local["k9"]["stage"] == "read"
    assert remote["k9"]["error_type"] == local["k9"]["error_type"] == "FileNotFoundError"
    assert remote["k9"]["source"] == f"{runs['gs_data']}/images/missing.jpg"


def test_parquet_on_gcs_is_the_one_schema_with_metadata(runs):
    path = f"{runs['gs_out']}/{read_manifest(runs['gs_out'])['files']['text'][0]}"
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        schema = pq.read_schema(pa.BufferReader(handle.read()))
    assert schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert schema.metadata[b"model"] == b"text.keras" and schema.metadata[b"dimension"] == b"8"


def test_image_weights_file_on_gcs(runs):
    remote = _by_id(read_embeddings(runs["gs_weights_out"], "image"), runs["gs_data"])
    local = _by_id(read_embeddings(runs["local_weights_out"], "image"), runs["data"])
    assert sorted(remote) == sorted(local) and len(remote) == 5
    for ident, row in local.items():
        np.testing.assert_array_equal(np.asarray(remote[ident]["embedding"]), np.asarray(row["embedding"]), err_msg=ident)
    model = read_manifest(runs["gs_weights_out"])["models"]["image"]
    assert model["sha256"] == hashlib.sha256(runs["weights"].read_bytes()).hexdigest()
    assert model["details"]["weights"].startswith("gs://") and model["dimension"] == 256
    assert model["name"] == "keras.applications.MobileNet(size=32, alpha=0.25, weights=mobilenet.weights.h5)"


def test_rerun_into_the_same_gcs_output_has_one_row_per_record(tmp_path, gcs_emulator, tiny_text_model):
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "text": f"good {i}"}) + "\n" for i in range(6)))
    argv = [
        "--output",
        gcs_emulator.url("rerun", "out"),
        "--text-input",
        gcs_emulator.upload(data, "rerun", "in.jsonl"),
        "--text-model",
        gcs_emulator.upload(tiny_text_model, "rerun", "text.keras"),
    ]
    first = run(argv)
    # a run killed while it finalised more shards left these: its manifest deleted, its marker (a dead pid) there
    FileSystems.delete([gcs_emulator.url("rerun", "out", MANIFEST_NAME)])
    dead = subprocess.Popen(["true"])
    dead.wait()
    with FileSystems.create(gcs_emulator.url("rerun", "out", RUNNING_NAME)) as handle:
        handle.write(json.dumps({"run_id": "killed", "host": socket.gethostname(), "pid": dead.pid}).encode())
    stale = gcs_emulator.url("rerun", "out", "text", "part-00007-of-00009.parquet")
    with FileSystems.create(stale) as handle:
        handle.write(b"stale")
    second = run(argv + ["--normalize"])
    table = read_embeddings(gcs_emulator.url("rerun", "out"), "text")
    assert sorted(table.column("id").to_pylist()) == [f"r{i}" for i in range(6)]
    assert not FileSystems.exists(stale)
    assert first["run_id"] != second["run_id"] and second["normalized"] is True
    norms = np.linalg.norm(np.array(table.column("embedding").to_pylist()), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--text-input", "gs://{bucket}/config/none-*.jsonl", "matches no file"),
        ("--text-input", "gs://no-such-bucket-here/in-*.jsonl", "--text-input 'gs://no-such-bucket-here/in-*.jsonl'"),
        (
            "--text-model",
            "gs://{bucket}/config/nope.keras",
            "--text-model 'gs://{bucket}/config/nope.keras': cannot read the model file (FileNotFoundError",
        ),
    ],
)
def test_configuration_errors_for_gcs_paths_name_the_flag_and_write_nothing(
    tmp_path, capsys, gcs_emulator, tiny_text_model, flag, value, message
):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"id": "a", "text": "good"}) + "\n")
    values = {
        "--text-input": gcs_emulator.upload(data, "config", "in.jsonl"),
        "--text-model": gcs_emulator.upload(tiny_text_model, "config", "text.keras"),
    }
    values[flag] = value.format(bucket=gcs_emulator.bucket)
    output = gcs_emulator.url("config", "out")
    code = main(["--output", output, "--text-input", values["--text-input"], "--text-model", values["--text-model"]])
    assert code == 2
    assert message.format(bucket=gcs_emulator.bucket) in capsys.readouterr().err
    assert FileSystems.match([output + "/**"])[0].metadata_list == []


def test_a_fresh_process_reaches_gcs_without_waiting_for_auth(tmp_path, gcs_emulator):
    """Every Beam worker process looks credentials up once; with the fake file it takes no time."""
    probe = tmp_path / "probe.txt"
    probe.write_text("probe")
    code = (
        "import time; from apache_beam.io.filesystems import FileSystems; t = time.monotonic(); "
        f"assert FileSystems.exists({gcs_emulator.upload(probe, 'auth', 'probe.txt')!r}); "
        "print(time.monotonic() - t)"
    )
    env = dict(os.environ, **gcs_emulator.env)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 5.0  # Beam's auth retries alone take ~20 s
