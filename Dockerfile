# One image for the Dataflow workers (SDK harness) and for the flex-template launcher.
#
#   gcloud builds submit --tag "$IMAGE" .          (or: docker build -t "$IMAGE" . && docker push "$IMAGE")
#
# Workers start it with Beam's own entrypoint (/opt/apache/beam/boot); the flex-template launcher
# runs /opt/google/dataflow/python_template_launcher, which calls FLEX_TEMPLATE_PYTHON_PY_FILE with
# each template parameter as --name=value. See docs/dataflow.md. Not built by the tests or CI:
# neither has a Docker engine (tests/test_gpu.py replays its COPY lines and builds the package).

ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest
FROM ${LAUNCHER_IMAGE} AS launcher

FROM apache/beam_python3.11_sdk:2.77.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /template

# Dependencies first (their layer is reused while only the code changes); apache-beam[gcp] is
# already in the base image at the pinned version, so pip keeps it. OpenVINO (the image networks'
# default backend) comes from requirements.txt too; the import check below proves it loads.
# Then the fast-decode extra (`--image-decoder opencv`), so workers can run either decoder;
# --no-deps: its only dependency is numpy, already pinned by requirements.txt.
COPY requirements.txt .
RUN pip install -r requirements.txt \
    && pip install --no-deps opencv-python-headless==5.0.0.93

# The job's own package, installed like on any machine (pyproject.toml reads requirements.txt).
COPY setup.py pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY transforms ./transforms
RUN pip install --no-deps --no-build-isolation . \
    && python -c "import pipeline.run, transforms.embed.dofns, openvino, cv2"

# Flex-template launch: `python /template/launch.py --output=gs://... --text_input=gs://...`.
# Build with --build-arg SDK_CONTAINER_IMAGE="$IMAGE" so that the job's workers run this same
# image unless the launch names another (--parameters sdk_container_image=...).
ARG SDK_CONTAINER_IMAGE=""
ENV SDK_CONTAINER_IMAGE=${SDK_CONTAINER_IMAGE}
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
RUN printf '%s\n' \
      '"""Flex-template entry point: the launcher passes every parameter as --name=value."""' \
      'import os' \
      'import sys' \
      'from pipeline.run import main' \
      'argv = sys.argv[1:]' \
      'image = os.environ.get("SDK_CONTAINER_IMAGE")' \
      'if image and not any(a.startswith("--sdk_container_image") for a in argv):' \
      '    argv.append("--sdk_container_image=" + image)' \
      'sys.exit(main(argv))' \
      > /template/launch.py \
    && python -m py_compile /template/launch.py
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/launch.py

# Workers: the Beam SDK harness, as in the base image (stated here because this image is also the
# flex-template image, which Dataflow starts through the launcher's path instead).
ENTRYPOINT ["/opt/apache/beam/boot"]
