"""Launch checks that look at the inputs and the machine (issue 22 items 3 and 5, issue 19 leftovers).

- The fields the flags name are checked against the first records of each input (JSONL, CSV,
  Parquet, gzipped; image manifests): a field none of them has stops the run with exit 2 and lists
  the fields that exist; a field only some records have is fine (dead letters cover those).
- `--runner DataflowRunner` without credentials or without --project/--region/--temp_location is
  one line and exit 2, before anything is read, with no retry tracebacks.
- `--output` that cannot be made (/proc/...) is exit 2; a gs:// --output whose storage is down fails
  before any model loads; `--runner directrunner` (any case) is a local run.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import cli
from pipeline.checks import check_dataflow_ready, check_inputs, config_from_options
from pipeline.options import ConfigError, StorageUnreachable
from tests_support import refused_storage, run_pipeline
from transforms.io import fileio
from transforms.results import MANIFEST_NAME

REVIEWS = [{"id": f"r{i}", "text": f"good movie {i}", "stars": i % 5} for i in range(30)]


def _jsonl(path: pathlib.Path, records, opener=open) -> pathlib.Path:
    with opener(path, "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in records))
    return path


def _csv(path: pathlib.Path, header: str, rows) -> pathlib.Path:
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows))
    return path


def _config(tmp_path, *flags):
    argv = ["--output", str(tmp_path / "out"), *map(str, flags)]
    return config_from_options(PipelineOptions(argv))


def _text(tmp_path, data, *flags):
    return _config(tmp_path, "--text-input", data, "--text-model", tmp_path / "m.keras", *flags)


def _image(tmp_path, manifest, *flags):
    return _config(tmp_path, "--image-input", manifest, "--image-model", "MobileNetV2", *flags)


# ---- issue 22 item 3: the fields, at launch ------------------------------------------------------


def test_a_text_field_no_record_has_is_exit_2_listing_the_fields(tmp_path, tiny_text_model, capsys):
    data = _jsonl(tmp_path / "reviews.jsonl", REVIEWS)
    out = tmp_path / "out"
    argv = ["run", "--output", str(out), "--text-input", str(data), "--text-model", str(tiny_text_model), "--text-field", "body"]
    assert cli.main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == f"error: --text-field 'body': no record of {data} has 'body' (fields: id, text, stars)"
    assert not out.exists()  # found before anything was claimed or written


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "csv", "parquet"])
def test_each_text_format_is_sampled(tmp_path, kind):
    if kind == "csv":
        data = _csv(tmp_path / "reviews.csv", "key,review,stars", [f"k{i},nice film {i},{i}" for i in range(5)])
    elif kind == "parquet":
        data = tmp_path / "reviews.parquet"
        pq.write_table(pa.table({"key": ["k0", "k1"], "review": ["nice", "bad"], "stars": [1, 2]}), data)
    else:
        records = [{"key": f"k{i}", "review": "nice", "stars": i} for i in range(5)]
        data = _jsonl(tmp_path / f"reviews.{kind}", records, gzip.open if kind.endswith(".gz") else open)
    with pytest.raises(ConfigError, match=r"^--text-field 'text': no record of .* has 'text' \(fields: key, review, stars\)$"):
        _text(tmp_path, data)
    with pytest.raises(ConfigError, match=r"^--text-id-field 'id_': no record of .* \(fields: key, review, stars\)$"):
        _text(tmp_path, data, "--text-field", "review", "--text-id-field", "id_")
    with pytest.raises(ConfigError, match=r"^--passthrough 'label': no record of .* has 'label'"):
        _text(tmp_path, data, "--text-field", "review", "--passthrough", "stars,label")
    config = _text(tmp_path, data, "--text-field", "review", "--text-id-field", "key", "--passthrough", "stars")
    assert config.text_field == "review" and config.passthrough == ("stars",)


def test_a_field_some_records_have_passes_and_the_default_id_may_be_absent(tmp_path):
    records = [{"text": "no id here"}, {"id": "b", "text": "x", "label": "pos"}] + [{"text": f"t{i}"} for i in range(5)]
    data = _jsonl(tmp_path / "mixed.jsonl", records)
    config = _text(tmp_path, data, "--passthrough", "label")  # `label` in one record: the rest get nulls
    assert config.passthrough == ("label",)
    _text(tmp_path, _jsonl(tmp_path / "no-ids.jsonl", [{"text": "a"}, {"text": "b"}]))  # ids from file:line
    _text(
        tmp_path, _csv(tmp_path / "plain.txt", "just a line", ["another line"]), "--text-field", "anything"
    )  # plain lines: no fields


def test_each_text_input_is_checked_and_passthrough_in_any_input_will_do(tmp_path):
    (tmp_path / "a").mkdir()
    first = _jsonl(tmp_path / "a" / "first.jsonl", REVIEWS)
    second = _jsonl(tmp_path / "b.jsonl", [{"id": "x", "body": "y", "label": "pos"}])
    with pytest.raises(ConfigError, match=r"--text-field 'text': no record of .*b\.jsonl has 'text' \(fields: id, body, label\)"):
        _text(tmp_path, f"{tmp_path}/a/*.jsonl", "--text-input", second)
    config = _text(
        tmp_path, first, "--passthrough", "label", "--text-input", _jsonl(tmp_path / "c.jsonl", [{"text": "t", "label": "l"}])
    )
    assert config.passthrough == ("label",)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_an_image_manifest_without_the_uri_field_is_exit_2_listing_its_columns(tmp_path, kind):
    rows = [{"path": f"img/{i}.jpg", "label": "cat", "key": f"k{i}"} for i in range(4)]
    manifest = tmp_path / f"manifest.{kind}"
    if kind == "csv":
        _csv(manifest, "path,label,key", [f"{r['path']},{r['label']},{r['key']}" for r in rows])
    elif kind == "jsonl":
        _jsonl(manifest, rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), manifest)
    with pytest.raises(
        ConfigError, match=rf"^--image-uri-field 'uri': no record of .*manifest\.{kind} has 'uri' \(fields: path, label, key\)$"
    ):
        _image(tmp_path, manifest)
    with pytest.raises(ConfigError, match=r"^--image-id-field 'id': no record of"):
        _image(tmp_path, manifest, "--image-uri-field", "path", "--image-id-field", "id")
    with pytest.raises(ConfigError, match=r"^--passthrough 'labels': no record of"):
        _image(tmp_path, manifest, "--image-uri-field", "path", "--passthrough", "labels")
    config = _image(tmp_path, manifest, "--image-uri-field", "path", "--image-id-field", "key", "--passthrough", "label")
    assert config.image_uri_field == "path" and config.passthrough == ("label",)


def test_the_shared_manifest_names_its_path_column(shared_data, tmp_path):
    manifest = shared_data / "images" / "imagenette-sample" / "MANIFEST.csv"  # the example: 300 rows, a path column
    with pytest.raises(ConfigError) as refused:
        _image(tmp_path, manifest)
    assert str(refused.value) == (
        f"--image-uri-field 'uri': no record of {manifest} has 'uri' (fields: path, label, bytes, sha256, width, height, mode)"
    )
    assert _image(tmp_path, manifest, "--image-uri-field", "path", "--passthrough", "label").image_uri_field == "path"


# ---- issue 22 item 5: Dataflow's flags and credentials ---------------------------------------------

DATAFLOW = ["--runner", "DataflowRunner", "--project", "p", "--region", "europe-west1", "--temp_location", "gs://b/tmp"]
REMOTE_JOB = ["--output", "gs://b/out", "--text-input", "gs://b/in/*.jsonl", "--text-model", "gs://b/m/text.keras"]


def _no_credentials_env(home: pathlib.Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_", "STORAGE_EMULATOR"))}
    return {**env, "HOME": str(home), "CLOUDSDK_CONFIG": str(home / "gcloud")}


def test_dataflow_without_credentials_is_one_line_and_exit_2_before_anything_is_read(tmp_path):
    done = run_pipeline("run", *DATAFLOW, *REMOTE_JOB, env=_no_credentials_env(tmp_path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("error:") == 1
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "--runner DataflowRunner: no Google Cloud credentials" in line and "GOOGLE_APPLICATION_CREDENTIALS" in line
    assert "Traceback" not in done.stderr and "DefaultCredentialsError" not in done.stderr
    assert "cannot list" not in done.stderr and "RetryError" not in done.stderr  # nothing was listed


@pytest.mark.parametrize("missing", ["--project", "--region", "--temp_location"])
def test_dataflow_without_a_required_flag_names_it(missing, capsys):
    flags = list(DATAFLOW)
    del flags[flags.index(missing) : flags.index(missing) + 2]
    assert cli.main(["run", *flags, *REMOTE_JOB]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --runner DataflowRunner needs ") and missing in line.split("(")[0]


def test_dataflow_credentials_from_a_key_file_pass(tmp_path, monkeypatch):
    key = tmp_path / "adc.json"
    key.write_text(json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    check_dataflow_ready(PipelineOptions([*DATAFLOW, *REMOTE_JOB]))  # found without a network call
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=r"no Google Cloud credentials \(File .*missing\.json was not found"):
        check_dataflow_ready(PipelineOptions([*DATAFLOW, *REMOTE_JOB]))


# ---- issue 19 leftovers: the output and the runner ------------------------------------------------


def test_an_output_that_cannot_be_made_is_exit_2(tmp_path, tiny_text_model, capsys):
    data = _jsonl(tmp_path / "reviews.jsonl", REVIEWS)
    argv = ["run", "--output", "/proc/x/out", "--text-input", str(data), "--text-model", str(tiny_text_model)]
    assert cli.main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --output '/proc/x/out': cannot write in '/proc'")


def test_a_gs_output_whose_storage_is_down_fails_before_the_models_load(tmp_path, capsys):
    data = _jsonl(tmp_path / "reviews.jsonl", REVIEWS)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a model")  # loading it would be exit 2 naming --text-model
    with refused_storage(timeout=2):
        code = cli.main(["run", "--output", "gs://bucket/out", "--text-input", str(data), "--text-model", str(broken)])
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1 and "--output 'gs://bucket/out'" in line and "--text-model" not in line


def test_a_lowercase_directrunner_is_a_local_run(tmp_path, tiny_text_model, capsys):
    data = _jsonl(tmp_path / "reviews.jsonl", REVIEWS[:6])
    out = tmp_path / "out"
    argv = [
        "run",
        "--runner",
        "directrunner",
        "--output",
        str(out),
        "--text-input",
        str(data),
        "--text-model",
        str(tiny_text_model),
    ]
    assert cli.main(argv) == 0, capsys.readouterr().err
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["counts"]["text"]["embedded"] == 6


def test_the_sample_is_bounded_a_first_record_past_it_is_left_to_the_run(tmp_path):
    data = tmp_path / "one-long-line.jsonl"
    data.write_text(json.dumps({"id": "a", "text": "x" * (3 << 20)}))  # 3 MiB, no newline: past the 1 MiB sample
    assert _text(tmp_path, data, "--text-field", "body").text_field == "body"  # nothing learned: no refusal


class _FailingListing(fileio.InputListing):
    """A listing whose every call fails with `error` (what a missing bucket or an outage raises)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def files(self, pattern):
        raise self.error


@pytest.mark.parametrize("flag", ["--text-input", "--image-input"])
def test_a_listing_failure_is_a_config_error_naming_the_flag_or_an_outage_when_storage_is_down(tmp_path, flag):
    """Globs and image folders alike: a listing that fails for good (no permission) is exit 2 naming
    the flag and the path; one that kept failing transiently is StorageUnreachable (exit 1)."""
    pattern = str(tmp_path) if flag == "--image-input" else str(tmp_path / "*.jsonl")  # a folder / a glob
    with pytest.raises(ConfigError) as denied:
        check_inputs(flag, [pattern], _FailingListing(PermissionError("403 no access")))
    assert str(denied.value) == f"{flag} {pattern!r}: cannot list (PermissionError: 403 no access)"
    with pytest.raises(StorageUnreachable) as down:
        check_inputs(flag, [pattern], _FailingListing(ConnectionError("connection refused")))
    assert str(down.value).startswith(f"storage unreachable: {flag} {pattern!r} could not be listed")
    assert "--storage-timeout" in str(down.value)
