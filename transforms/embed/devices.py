"""Which devices TensorFlow runs the models on, and which accelerator a Dataflow job asked for.

Nothing in the job pins a device: TensorFlow places the models' ops on the first GPU it sees
(`GPU:0`) and otherwise on the CPU. A worker process logs, when it loads a model, what TensorFlow
sees, and counts a load that has a GPU (the Beam counter `embeddings/<modality>_model_loads_on_gpu`,
beside `<modality>_model_loads`, in the Dataflow job's counters). The accelerator requested with
`--dataflow_service_options worker_accelerator=...` is recorded in the manifest (`workers`).
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

__all__ = ["visible_devices", "log_model_devices", "requested_workers"]

_LOGGER = logging.getLogger(__name__)
_LOCK = threading.Lock()
_LOGGED: set[str] = set()


def visible_devices() -> dict:
    """What TensorFlow in this process can use: its GPUs (name, compute capability) and whether it
    was built with CUDA (a `tensorflow-cpu` install never sees a GPU)."""
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device)
        except Exception:  # noqa: BLE001 - details are informative only
            details = {}
        gpus.append(
            {
                "device": device.name,
                "name": details.get("device_name"),
                "compute_capability": ".".join(map(str, details["compute_capability"]))
                if details.get("compute_capability")
                else None,
            }
        )
    return {"gpus": gpus, "built_with_cuda": bool(tf.test.is_built_with_cuda())}


def log_model_devices(modality: str) -> int:
    """Log (once per process and modality) where the model runs; returns 1 when on a GPU, else 0."""
    devices = visible_devices()
    on_gpu = 1 if devices["gpus"] else 0
    with _LOCK:
        first = modality not in _LOGGED
        _LOGGED.add(modality)
    if first:
        if on_gpu:
            names = ", ".join(f"{g['device']} ({g['name'] or 'unknown'})" for g in devices["gpus"])
            _LOGGER.info("%s model runs on GPU: %s (TensorFlow uses the first; the CPU decodes and batches)", modality, names)
        else:
            why = "TensorFlow is a CPU-only build" if not devices["built_with_cuda"] else "no GPU is visible to TensorFlow"
            _LOGGER.info("%s model runs on CPU (%s)", modality, why)
    return on_gpu


def requested_workers(options) -> dict:
    """The worker resources a job asked for, for the manifest: accelerator, container image,
    machine type, one SDK process per VM or not, harness threads (None where not given)."""
    from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions, WorkerOptions

    cloud = options.view_as(GoogleCloudOptions)
    workers = options.view_as(WorkerOptions)
    debug = options.view_as(DebugOptions)
    experiments = debug.experiments or []
    accelerator: Optional[str] = None
    for option in cloud.dataflow_service_options or []:
        if option.startswith("worker_accelerator="):
            accelerator = option.split("=", 1)[1]
    return {
        "accelerator": accelerator,
        "machine_type": workers.machine_type,
        "sdk_container_image": workers.sdk_container_image,
        "one_sdk_process_per_vm": "no_use_multiple_sdk_containers" in experiments,
        "harness_threads": debug.number_of_worker_harness_threads,
    }
