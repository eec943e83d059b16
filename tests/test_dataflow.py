"""The complete Dataflow job, built offline: a template on the GCS emulator, read back and checked.

`--runner DataflowRunner --template_location gs://...` makes Beam do everything a real launch does
except the final API call: it validates the options, builds the sdist of `--setup_file`, stages it
with the pipeline proto to `--staging_location`, and writes the job request as the template file.
The emulator serves every gs:// path, so nothing leaves the machine. `--dry_run` stops even
earlier (no staging) and is used for the `--sdk_container_image` variant.

`flex_template/metadata.json` is generated from `EmbeddingJobOptions`; the test below fails when
a flag is added, removed or re-worded without regenerating it:

    PYTHONPATH=. python tests/test_dataflow.py
"""

import argparse
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import pytest

from gcs_emulator import gcs_emulator  # noqa: F401 - the fixture

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
METADATA_PATH = PROJECT_ROOT / "flex_template" / "metadata.json"
REGION = "europe-west1"
SDK_IMAGE = "europe-docker.pkg.dev/embeddings-test-project/beam/embeddings:0.1.0"

pytestmark = pytest.mark.gcs

# The steps a user sees in Dataflow's job graph.
EXPECTED_STEPS = {
    "Text",
    "Text/ReadTextRecords/MatchFiles",
    "Text/ReadTextRecords/PlanReads",
    "Text/ReadTextRecords",
    "Text/EmbedText",
    "Text/WriteTextEmbeddings",
    "Images",
    "Images/MatchImageFiles",
    "Images/ReadImageManifests",
    "Images/EmbedImages",
    "Images/WriteImageEmbeddings",
    "WriteErrors",
    "SumCounts",
    "WriteManifest",
}
TEXT_EMBED_STEP = "Text/EmbedText/EmbedTextBatches/ParDo(EmbedTextBatchesFn)"
IMAGE_EMBED_STEP = "Images/EmbedImages/EmbedImageBatches/ParDo(EmbedImageBatchesFn)"


def _read(path: str) -> bytes:
    from transforms.io import fileio

    return fileio.read_bytes(path)


def _dataflow_flags(emulator, job: str) -> list[str]:
    return [
        "--runner",
        "DataflowRunner",
        "--project",
        "embeddings-test-project",
        "--region",
        REGION,
        "--job_name",
        job,
        "--temp_location",
        emulator.url(job, "temp"),
        "--staging_location",
        emulator.url(job, "staging"),
    ]


def _job_flags(emulator, job: str, text_model: str, image_model: str) -> list[str]:
    return [
        "--output",
        emulator.url(job, "out"),
        "--text-input",
        emulator.url(job, "in", "*.jsonl"),
        "--text-model",
        text_model,
        "--image-input",
        emulator.url(job, "in", "*.png"),
        "--image-input",
        emulator.url(job, "in", "images.csv"),
        "--image-model",
        image_model,
        "--passthrough",
        "label",
        "--text-batch-size",
        "64",
    ]


def _run_in_project_root(argv: list[str], **kwargs) -> dict:
    """`--setup_file ./setup.py` is relative, as in the docs: run from the project root."""
    from pipeline.run import run

    cwd = os.getcwd()
    os.chdir(PROJECT_ROOT)
    try:
        return run(argv, **kwargs)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def models_on_gcs(gcs_emulator, tiny_text_model, tiny_image_model) -> dict:
    return {
        "text": gcs_emulator.upload(tiny_text_model, "models", "text.keras"),
        "image": gcs_emulator.upload(tiny_image_model, "models", "image.keras"),
    }


def _upload_inputs(emulator, job: str, folder: pathlib.Path) -> None:
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"id": "a", "text": "good movie", "label": "1"}) + "\n")
    (folder / "images.csv").write_text("uri,label\ngs://elsewhere/cat.jpg,cat\n")
    (folder / "dog.png").write_bytes(b"not decoded at build time")
    emulator.upload_tree(folder, job, "in")


@pytest.fixture(scope="module")
def template(tmp_path_factory, gcs_emulator, models_on_gcs) -> dict:
    """A Dataflow job template built with `--setup_file ./setup.py`, and what Beam staged for it."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.portability.api import beam_runner_api_pb2

    from transforms.io import fileio

    job = "embed-template"
    _upload_inputs(gcs_emulator, job, tmp_path_factory.mktemp("dataflow") / "in")
    earlier = gcs_emulator.url(job, "out", "_MANIFEST.json")  # an earlier run's finished output
    with FileSystems.create(earlier) as handle:
        handle.write(b'{"status": "complete"}')
    location = gcs_emulator.url(job, "template", "embed.json")
    argv = _dataflow_flags(gcs_emulator, job) + _job_flags(gcs_emulator, job, models_on_gcs["text"], models_on_gcs["image"])
    returned = _run_in_project_root(argv + ["--setup_file", "./setup.py", "--template_location", location])
    request = json.loads(_read(location))
    options = request["environment"]["sdkPipelineOptions"]["options"]
    staged = {path.rsplit("/", 1)[1]: path for path in fileio.match_paths([options["staging_location"] + "/*"])}
    return {
        "returned": returned,
        "request": request,
        "options": options,
        "staged": staged,
        "pipeline": beam_runner_api_pb2.Pipeline.FromString(_read(options["pipelineUrl"])),
        "earlier_output": earlier,
        "emulator": gcs_emulator,
    }


def test_template_run_returns_no_manifest(template):
    assert template["returned"] == {}  # nothing ran: run() must not wait or read an output


def test_job_graph_has_every_labelled_step(template):
    transforms = template["pipeline"].components.transforms
    names = {t.unique_name for t in transforms.values()}
    assert EXPECTED_STEPS <= names, EXPECTED_STEPS - names
    assert TEXT_EMBED_STEP in names
    assert IMAGE_EMBED_STEP in names


def test_workers_get_the_gcs_model_paths_not_launcher_copies(template, models_on_gcs):
    """The DoFns that Dataflow would ship carry the gs:// specs: each worker loads the model itself."""
    from apache_beam.internal import pickler
    from apache_beam.portability.api import beam_runner_api_pb2

    specs = {}
    for transform in template["pipeline"].components.transforms.values():
        if transform.unique_name in (TEXT_EMBED_STEP, IMAGE_EMBED_STEP):
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            do_fn = pickler.loads(payload.do_fn.payload)[0]
            specs[type(do_fn).__name__] = do_fn._spec
    assert specs["EmbedTextBatchesFn"].path == models_on_gcs["text"]
    assert specs["EmbedTextBatchesFn"].batch_size == 64
    assert specs["EmbedImageBatchesFn"].model == models_on_gcs["image"]


def test_job_options_carry_our_flags(template):
    options, emulator = template["options"], template["emulator"]
    job = "embed-template"
    assert options["output"] == emulator.url(job, "out")
    assert options["text_input"] == [emulator.url(job, "in", "*.jsonl")]
    assert options["image_input"] == [emulator.url(job, "in", "*.png"), emulator.url(job, "in", "images.csv")]
    assert options["text_model"].startswith("gs://") and options["image_model"].startswith("gs://")
    assert options["passthrough"] == "label" and options["text_batch_size"] == 64
    assert options["setup_file"] == "./setup.py"
    assert options["region"] == REGION and options["project"] == "embeddings-test-project"
    assert "use_runner_v2" in options["experiments"]


def test_job_request_is_a_batch_job_on_the_beam_sdk_image(template):
    request = template["request"]
    assert request["type"] == "JOB_TYPE_BATCH"
    assert request["name"] == "embed-template"
    images = [c["containerImage"] for c in request["environment"]["workerPools"][0]["sdkHarnessContainerImages"]]
    assert images and all(i.endswith(f"beam_python{sys.version_info.major}.{sys.version_info.minor}_sdk:2.77.0") for i in images)


def test_setup_py_package_is_staged_with_the_pipeline(template):
    staged = template["staged"]
    assert {"workflow.tar.gz", "pipeline.pb"} <= set(staged)
    environments = template["pipeline"].components.environments.values()
    staged_as = {dep.role_payload for env in environments for dep in env.dependencies}
    assert any(b"workflow.tar.gz" in payload for payload in staged_as)
    names = tarfile.open(fileobj=io.BytesIO(_read(staged["workflow.tar.gz"]))).getnames()
    root = names[0].split("/")[0]
    assert root == "beam-embeddings-0.1.0"
    for module in ("setup.py", "pipeline/run.py", "pipeline/graph.py", "transforms/embed/dofns.py", "transforms/embed/models.py"):
        assert f"{root}/{module}" in names, module


def test_staged_package_installs_like_on_a_worker(template, tmp_path):
    """Dataflow workers `pip install` the staged sdist; --no-deps keeps this offline."""
    tarball = tmp_path / "workflow.tar.gz"
    tarball.write_bytes(_read(template["staged"]["workflow.tar.gz"]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(tmp_path / "site"),
            str(tarball),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    for module in ("transforms/embed/dofns.py", "transforms/io/text_read.py", "pipeline/checks.py", "pipeline/options.py"):
        assert (site / module).exists(), module  # every subpackage is in the staged package


def test_building_a_template_leaves_an_earlier_output_alone(template):
    from apache_beam.io.filesystems import FileSystems

    assert FileSystems.exists(template["earlier_output"])


def test_container_image_job_stages_no_package(gcs_emulator, models_on_gcs, tmp_path):
    """With `--sdk_container_image` the workers already hold the package: nothing to build or stage."""
    from transforms.io import fileio

    job = "embed-container"
    _upload_inputs(gcs_emulator, job, tmp_path / "in")
    location = gcs_emulator.url(job, "template", "embed.json")
    argv = _dataflow_flags(gcs_emulator, job) + _job_flags(gcs_emulator, job, models_on_gcs["text"], models_on_gcs["image"])
    argv += [
        "--sdk_container_image",
        SDK_IMAGE,
        "--sdk_location",
        "container",
        "--template_location",
        location,
        "--experiments",
        "no_use_multiple_sdk_containers",
        "--number_of_worker_harness_threads",
        "4",
    ]
    assert _run_in_project_root(argv) == {}
    request = json.loads(_read(location))
    pool = request["environment"]["workerPools"][0]
    assert [c["containerImage"] for c in pool["sdkHarnessContainerImages"]] == [SDK_IMAGE]
    assert pool["numThreadsPerWorker"] == 4
    options = request["environment"]["sdkPipelineOptions"]["options"]
    assert "no_use_multiple_sdk_containers" in options["experiments"]
    assert "setup_file" not in options
    staged = {path.rsplit("/", 1)[1] for path in fileio.match_paths([options["staging_location"] + "/*"])}
    assert "pipeline.pb" in staged
    assert not {"workflow.tar.gz", "dataflow_python_sdk.tar"} & staged  # --sdk_location container: no SDK either


def test_dockerfile_matches_the_pinned_beam_and_python():
    """The worker image must run the Beam and Python versions that build the job graph."""
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    beam = re.search(r"^apache-beam\[gcp\]==(\S+)$", (PROJECT_ROOT / "requirements.txt").read_text(), re.M).group(1)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert re.search(rf"^FROM apache/beam_python{python}_sdk:{re.escape(beam)}$", dockerfile, re.M)
    assert f"python{python.replace('.', '')}-template-launcher-base" in dockerfile
    for copied in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        assert (PROJECT_ROOT / copied).exists(), copied
    # the flex-template entry point that the Dockerfile writes must be valid Python
    printf = re.search(r"RUN printf '%s\\n' \\\n(.*?)> /template/launch.py", dockerfile, re.S).group(1)
    source = "\n".join(re.findall(r"^\s+'(.*)' \\$", printf, re.M))
    compile(source, "launch.py", "exec")
    assert "from pipeline.run import main" in source


# ---- flex_template/metadata.json -------------------------------------------------------------

_WORDS = {"id": "ID", "uri": "URI", "l2": "L2"}
_POSITIVE_INT = r"^[1-9][0-9]*$"
_BOOLEAN = r"^(true|false)$"


def _run_flags() -> list[argparse.Action]:
    from pipeline.options import EmbeddingJobOptions

    parser = argparse.ArgumentParser(add_help=False)
    EmbeddingJobOptions._add_argparse_args(parser)
    return parser._actions


def _regexes(action: argparse.Action) -> list[str]:
    from transforms.embed.models import NETWORKS

    networks = "|".join(NETWORKS)
    by_name = {
        "output": r"^gs://[^/]+(/.*)?$",
        "text_input": r"^gs://[^/]+/.+$",
        "image_input": r"^gs://[^/]+/.+$",
        "incremental_from": r"^gs://[^/,]+(/[^,]*)?(,gs://[^/,]+(/[^,]*)?)*$",  # one folder or several, comma-separated
        "text_model": r"^gs://[^/]+/.+\.(keras|h5)$",
        "image_model": rf"^({networks}|gs://[^/]+/.+\.(keras|h5))$",
        "image_weights": r"^(imagenet|none|gs://[^/]+/.+)$",
        "image_preprocess": rf"^({networks})$",
        "image_alpha": r"^([0-9]*\.)?[0-9]+$",
    }
    if action.dest in by_name:
        return [by_name[action.dest]]
    if action.type is int:
        return [_POSITIVE_INT]
    if isinstance(action.default, bool):
        return [_BOOLEAN]
    return []


def _label(dest: str) -> str:
    words = [_WORDS.get(word, word) for word in dest.split("_")]
    return " ".join([words[0].capitalize()] + words[1:])


def _template_help(action: argparse.Action, regexes: list[str]) -> str:
    """A flag's help as the template shows it: where the template takes gs:// paths only (Dataflow's
    workers cannot read the launcher's disk), the help does not offer local paths."""
    if any("gs://" in regex for regex in regexes):
        return action.help.replace("(local or gs://)", "(gs://)")
    return action.help


def flex_template_metadata() -> dict:
    """The flex template's parameters: exactly the `run` flags, with their own help texts."""
    parameters = []
    for action in _run_flags():
        regexes = _regexes(action)
        parameter = {
            "name": action.dest,
            "label": _label(action.dest),
            "helpText": _template_help(action, regexes),
            "isOptional": action.dest != "output",
        }
        if regexes:
            parameter["regexes"] = regexes
        parameters.append(parameter)
    return {
        "name": "beam-embeddings",
        "description": "Batch text and image embeddings with Keras models, written to Parquet with a "
        "_MANIFEST.json (one Parquet folder per modality plus dead letters). Paths are gs://. "
        "Repeatable flags (text_input, image_input) take one value here; incremental_from takes several, comma-separated.",
        "parameters": parameters,
    }


def test_flex_template_metadata_lists_exactly_the_run_flags():
    metadata = json.loads(METADATA_PATH.read_text())
    flags = {action.dest for action in _run_flags()}
    assert {p["name"] for p in metadata["parameters"]} == flags, "regenerate: PYTHONPATH=. python tests/test_dataflow.py"
    assert metadata == flex_template_metadata(), "regenerate: PYTHONPATH=. python tests/test_dataflow.py"
    for parameter in metadata["parameters"]:
        assert parameter["label"] and parameter["helpText"] and isinstance(parameter["isOptional"], bool)
        assert re.fullmatch(r"[a-z0-9_]+", parameter["name"])  # Dataflow passes --name=value


def test_flex_template_regexes_accept_the_defaults():
    for action in _run_flags():
        default = action.default
        if default in (None, "") or not _regexes(action):
            continue
        value = str(default).lower() if isinstance(default, bool) else str(default)
        for regex in _regexes(action):
            assert re.match(regex, value), (action.dest, value, regex)


@pytest.mark.parametrize("name", [a.dest for a in _run_flags() if isinstance(a.default, bool)])
def test_flex_template_boolean_parameters_parse_as_name_equals_value(name):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.checks import check_unknown_flags
    from pipeline.options import EmbeddingJobOptions

    for value, expected in (("true", True), ("false", False)):
        check_unknown_flags([f"--{name}={value}"])
        assert getattr(PipelineOptions([f"--{name}={value}"]).view_as(EmbeddingJobOptions), name) is expected


if __name__ == "__main__":
    METADATA_PATH.parent.mkdir(exist_ok=True)
    METADATA_PATH.write_text(json.dumps(flex_template_metadata(), indent=2) + "\n")
    print(f"wrote {METADATA_PATH.relative_to(PROJECT_ROOT)}")
