"""GPU workers, checked offline: the Dataflow job built with the GPU options, the GPU image's
Dockerfile (Docker's own parser, a shell syntax check of every RUN, hadolint), and the job's
device handling (nothing pins the CPU; each worker process logs and counts where its model runs).

Not run here: a real GPU, the image build (no Docker engine; the package build from each image's
COPY lines is replayed instead), a Dataflow job.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
import shutil
import subprocess
import sys
import types

import pytest

from gcs_emulator import gcs_emulator  # noqa: F401 - the fixture
from tests_support import PROJECT_ROOT, build_dataflow_template, pipeline_do_fns

DOCKERFILE = PROJECT_ROOT / "Dockerfile.gpu"
GPU_IMAGE = "europe-docker.pkg.dev/embeddings-test-project/beam/embeddings-gpu:0.1.0"
ACCELERATOR = "type:nvidia-tesla-t4;count:1;install-nvidia-driver"


# ---- Dockerfile.gpu ---------------------------------------------------------------------------


_PARSE = """
import json, sys
import dockerfile
commands = [{f: getattr(c, f) for f in ("cmd", "sub_cmd", "json", "original", "flags", "value")} for c in dockerfile.parse_file(sys.argv[1])]
print(json.dumps({"commands": commands, "known": sorted(dockerfile.all_cmds())}))
"""


def parse_dockerfile(path: pathlib.Path) -> tuple[list, set]:
    """(commands, known instruction names) of a Dockerfile, parsed by Docker's own Go parser (the
    `dockerfile` package, requirements-dev.txt) in a child process: the Go runtime loaded into a
    process that also runs TensorFlow's threads and forks children crashed it (SIGSEGV) in a full
    test run. Commands have the parser's fields (`cmd`, `value` and `flags` as tuples, ...)."""
    pytest.importorskip("dockerfile")
    done = subprocess.run([sys.executable, "-c", _PARSE, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    commands = [
        types.SimpleNamespace(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()}) for c in data["commands"]
    ]
    return commands, set(data["known"])


@pytest.fixture(scope="module")
def instructions():
    return parse_dockerfile(DOCKERFILE)


def test_dockerfile_parses_with_known_instructions(instructions):
    commands, known = instructions
    assert [c.cmd for c in commands if c.cmd.lower() not in known] == []
    for command in commands:
        if command.cmd == "ENV":
            assert command.value and len(command.value) % 2 == 0, command.original
        assert command.value and all(command.value), command.original


def test_dockerfile_runs_the_beam_boot_entrypoint_of_the_pinned_sdk(instructions):
    commands, _ = instructions
    beam = re.search(r"^apache-beam\[gcp\]==(\S+)$", (PROJECT_ROOT / "requirements.txt").read_text(), re.M).group(1)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert [c.value for c in commands if c.cmd == "FROM"] == [(f"apache/beam_python{python}_sdk:{beam}",)]
    entrypoint = [c for c in commands if c.cmd == "ENTRYPOINT"]
    assert len(entrypoint) == 1 and entrypoint[0].json and entrypoint[0].value == ("/opt/apache/beam/boot",)
    assert commands[-1].cmd == "ENTRYPOINT"
    for command in commands:
        if command.cmd == "COPY":
            for source in command.value[:-1]:
                assert (PROJECT_ROOT / source).exists(), source
    env = {c.value[i]: c.value[i + 1] for c in commands if c.cmd == "ENV" for i in range(0, len(c.value), 2)}
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_every_run_step_is_valid_shell_and_its_python_compiles(instructions):
    commands, _ = instructions
    runs = [c.value[0] for c in commands if c.cmd == "RUN"]
    assert len(runs) == 2
    for script in runs:
        done = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, (script, done.stderr)
        for snippet in re.findall(r'python -c "([^"]+)"', script):
            compile(snippet, "RUN python -c", "exec")


def test_gpu_requirements_are_the_cpu_pins_with_tensorflows_cuda_build(instructions, tmp_path):
    """Run the image's own sed line on requirements.txt: same versions, tensorflow[and-cuda] at the
    tensorflow-cpu version, no tensorflow-cpu left (both would install the same `tensorflow` module)."""
    commands, _ = instructions
    script = next(c.value[0] for c in commands if c.cmd == "RUN" and "requirements-gpu.txt" in c.value[0])
    sed = script.split("&&")[0].strip()
    check = script.split("&&")[1].strip()
    shutil.copy(PROJECT_ROOT / "requirements.txt", tmp_path / "requirements.txt")
    done = subprocess.run(["sh", "-c", f"{sed} && {check}"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cpu = (tmp_path / "requirements.txt").read_text().splitlines()
    gpu = (tmp_path / "requirements-gpu.txt").read_text().splitlines()
    version = re.search(r"^tensorflow-cpu==([^\s;]+)", "\n".join(cpu), re.M).group(1)
    assert any(line.split(";")[0].strip() == f"tensorflow[and-cuda]=={version}" for line in gpu)  # marker kept
    assert not any(line.startswith("tensorflow-cpu") for line in gpu)
    assert [line for line in cpu if not line.startswith("tensorflow-cpu")] == [
        line for line in gpu if not line.startswith("tensorflow[")
    ]


def _replay_copies(dockerfile_path: pathlib.Path, context: pathlib.Path) -> pathlib.Path:
    """Replay a Dockerfile's COPY lines from the build context (the project) into `context`, which
    stands for the image's root, as Docker would: relative destinations under the current WORKDIR,
    a folder's contents into the destination folder, several sources into a folder. `COPY --from`
    (another image) is skipped. Returns the last WORKDIR (where the image's `pip install .` runs)."""
    workdir = pathlib.PurePosixPath("/")
    for command in parse_dockerfile(dockerfile_path)[0]:
        if command.cmd.upper() == "WORKDIR":
            workdir = workdir / command.value[0]
            (context / workdir.relative_to("/")).mkdir(parents=True, exist_ok=True)
        if command.cmd.upper() != "COPY" or any(flag.startswith("--from") for flag in command.flags):
            continue
        *sources, destination = command.value
        target = context / (workdir / destination).relative_to("/")
        for source in sources:
            origin = PROJECT_ROOT / source
            assert origin.exists(), f"{dockerfile_path.name}: COPY {source}: not in the build context"
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                into = destination.endswith("/") or len(sources) > 1 or target.is_dir()
                (target if into else target.parent).mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target / origin.name if into else target)
    return context / workdir.relative_to("/")


@pytest.mark.parametrize("name", ["Dockerfile.gpu", "Dockerfile"])
def test_the_image_builds_the_package_from_its_own_copy_lines(tmp_path, name):
    """Issue 19, case 11: the image's `pip install --no-deps --no-build-isolation .` works on what
    its COPY lines put there (Dockerfile.gpu copied neither pyproject.toml nor README.md, and
    setuptools failed: "Multiple top-level packages discovered"). Built here as a wheel, offline."""
    workdir = _replay_copies(PROJECT_ROOT / name, tmp_path / "image")
    run = [c.value[0] for c in parse_dockerfile(PROJECT_ROOT / name)[0] if c.cmd == "RUN"]
    assert any("pip install --no-deps --no-build-isolation ." in script for script in run)  # what is replayed
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), "."],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [wheel] = wheels.glob("beam_embeddings-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "pipeline/run.py" in names and "transforms/embed/dofns.py" in names and "pipeline/train/text.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in names)


def test_hadolint_finds_nothing_in_either_dockerfile():
    hadolint = shutil.which("hadolint") or str(pathlib.Path(sys.executable).parent / "hadolint")
    if not pathlib.Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install -r requirements-dev.txt)")
    for name in ("Dockerfile", "Dockerfile.gpu"):
        done = subprocess.run([hadolint, str(PROJECT_ROOT / name)], capture_output=True, text=True)
        assert done.returncode == 0, (name, done.stdout, done.stderr)


# ---- devices ----------------------------------------------------------------------------------


def test_nothing_in_the_job_pins_the_cpu():
    """TensorFlow places ops on GPU:0 when it sees one, unless the code hides it or pins a device."""
    pinning = re.compile(r"CUDA_VISIBLE_DEVICES|set_visible_devices|tf\.device\(|/CPU:0|/device:CPU")
    offenders = [
        str(path.relative_to(PROJECT_ROOT))
        for folder in ("pipeline", "transforms")
        for path in (PROJECT_ROOT / folder).rglob("*.py")
        if pinning.search(path.read_text())
    ]
    assert offenders == []


def test_a_worker_without_a_gpu_logs_the_cpu_and_why(caplog):
    import tensorflow as tf

    from transforms.embed import devices

    seen = devices.visible_devices()
    assert seen["built_with_cuda"] == tf.test.is_built_with_cuda()
    assert [g["device"] for g in seen["gpus"]] == [d.name for d in tf.config.list_physical_devices("GPU")]
    if seen["gpus"]:
        pytest.skip("this machine has a GPU")
    devices._LOGGED.discard("probe")
    with caplog.at_level(logging.INFO, logger="transforms.embed.devices"):
        assert devices.log_model_devices("probe") == 0
        assert devices.log_model_devices("probe") == 0  # logged once per process
    messages = [r.getMessage() for r in caplog.records if r.name == "transforms.embed.devices"]
    reason = "TensorFlow is a CPU-only build" if not seen["built_with_cuda"] else "no GPU is visible to TensorFlow"
    assert messages == [f"probe model runs on CPU ({reason})"]


# ---- the Dataflow job with GPU options ------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_job(gcs_emulator, tiny_image_model, tmp_path_factory) -> dict:
    job = "embed-gpu"
    folder = tmp_path_factory.mktemp("gpu") / "in"
    folder.mkdir()
    (folder / "dog.png").write_bytes(b"not decoded at build time")
    gcs_emulator.upload_tree(folder, job, "in")
    return build_dataflow_template(
        gcs_emulator,
        job,
        GPU_IMAGE,
        [
            "--dataflow_service_options",
            f"worker_accelerator={ACCELERATOR}",
            "--machine_type",
            "n1-standard-8",
            "--experiments",
            "no_use_multiple_sdk_containers",
            "--number_of_worker_harness_threads",
            "2",
            "--image-input",
            gcs_emulator.url(job, "in", "*.png"),
            "--image-model",
            gcs_emulator.upload(tiny_image_model, job, "models", "image.keras"),
            "--image-batch-size",
            "128",
        ],
    )


def _do_fn(pipeline, name: str):
    return pipeline_do_fns(pipeline, name)[name]


@pytest.mark.gcs
def test_job_request_asks_for_a_gpu_one_sdk_process_and_the_gpu_image(gpu_job):
    environment = gpu_job["request"]["environment"]
    assert f"worker_accelerator={ACCELERATOR}" in environment["serviceOptions"]
    pool = environment["workerPools"][0]
    assert pool["machineType"] == "n1-standard-8"
    assert pool["numThreadsPerWorker"] == 2
    assert [c["containerImage"] for c in pool["sdkHarnessContainerImages"]] == [GPU_IMAGE]
    assert "no_use_multiple_sdk_containers" in gpu_job["options"]["experiments"]


@pytest.mark.gcs
def test_job_embeds_with_the_requested_batch_and_records_the_workers_in_the_manifest(gpu_job):
    embed = _do_fn(gpu_job["pipeline"], "Images/EmbedImages/EmbedImageBatches/ParDo(EmbedImageBatchesFn)")
    assert embed._spec.batch_size == 128
    manifest = _do_fn(gpu_job["pipeline"], "WriteManifest")
    assert manifest._static["workers"] == {
        "accelerator": ACCELERATOR,
        "machine_type": "n1-standard-8",
        "sdk_container_image": GPU_IMAGE,
        "one_sdk_process_per_vm": True,
        "harness_threads": 2,
    }
