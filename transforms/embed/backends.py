"""Inference backends for the image networks: TensorFlow, or OpenVINO running the same function.

The image embedder (`transforms.embed.models.ImageEmbedder`) always builds one TensorFlow function,
uint8 pixels -> the network's own `preprocess_input` -> the headless network -> one vector per
image, traced for fixed batch shapes (the full batch, and smaller buckets for short batches:
`transforms.embed.models.batch_buckets`). The backend decides what runs it:

* `tensorflow`: that `tf.function` itself.
* `openvino`: the same traced function (its `ConcreteFunction`, preprocessing included, so the
  input is still the uint8 batch) converted by `openvino.convert_model` and compiled for the CPU
  with `PERFORMANCE_HINT=THROUGHPUT`. Conversion happens once per worker process, inside the shared
  model; its cost is logged and recorded in the manifest's model details. A smaller batch bucket is
  compiled from a reshaped copy of the converted model the first time a short batch needs it.
* `auto` (the default): OpenVINO when the `openvino` package is importable and the network
  converts, else TensorFlow; the log and the manifest say which, and why.

Precision: `f32` (default) sets `INFERENCE_PRECISION_HINT=f32`; without it OpenVINO picks bf16 on
CPUs that have bf16 units, which is much faster but moves the embeddings (cosine ~0.99 to the f32
vectors). `bf16` is an explicit opt-in and only exists for OpenVINO.

OpenVINO's THROUGHPUT hint splits the CPU into streams (2 streams of 1 thread on 2 cores); one
inference request runs on one stream. `OpenVINOForward` keeps one request per stream and lets that
many callers run at once (`concurrent_calls`), so the job's decode threads can each hand a batch to
the network while the other streams are busy: the cores are shared with decoding instead of being
over-subscribed by one request that wants every core.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import time
from typing import Optional

import numpy as np

from transforms import quiet

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BackendUnavailable",
    "ConversionFailed",
    "OpenVINOForward",
    "openvino_version",
    "compile_openvino",
]

BACKENDS = ("auto", "tensorflow", "openvino")
PRECISIONS = ("f32", "bf16")

_LOGGER = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """The requested backend's package is not installed in this Python environment."""


class ConversionFailed(RuntimeError):
    """The network did not convert to (or compile for) OpenVINO; the message says why, on one line."""


def _import_openvino():
    """`import openvino`, with its usage telemetry switched off first (`transforms.quiet.block_telemetry`:
    its import alone starts it). Every import of OpenVINO here goes through this."""
    quiet.block_telemetry()
    import openvino

    return openvino


def openvino_version() -> Optional[str]:
    """The installed OpenVINO version, or None when the package is not importable."""
    try:
        openvino = _import_openvino()
    except Exception:  # noqa: BLE001 - not installed, or a broken install: either way, unavailable
        return None
    return str(getattr(openvino, "__version__", "unknown")).split("-")[0]


def _switch_off_converter_telemetry() -> None:
    """Make `openvino.convert_model` send no usage telemetry.

    Its converter reports each conversion to Google Analytics through `openvino-telemetry` unless a
    consent file says no (called from Python there is no dialog, and no file counts as consent),
    from a subprocess that waits up to 3 s per event without a network. A batch job on workers
    must make no such calls, and the waits doubled the conversion time here. The converter falls
    back to its own no-op stub when `openvino-telemetry` is not importable; `_import_openvino`
    makes it unimportable before OpenVINO is imported (its import alone starts telemetry), and this
    installs the stub again for a process that imported OpenVINO before the job did.
    """
    try:
        from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils
    except Exception:  # noqa: BLE001 - another layout: nothing to switch off here
        return
    convert_impl.tm = telemetry_stub
    telemetry_utils.tm = telemetry_stub


def _one_line(exc: BaseException) -> str:
    """An exception on one short line; for OpenVINO's conversion report, only its summary."""
    text = " ".join(str(exc).split())
    if "Summary:" in text:  # "Check 'false' failed at <file>: ... Summary: -- No conversion rule found for operations: X ..."
        text = text.split("Summary:", 1)[1].strip(" -")
        text = text.split(" To facilitate", 1)[0]
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


@dataclasses.dataclass
class OpenVINOForward:
    """A compiled OpenVINO model with one inference request per stream; thread-safe.

    Call it with a uint8 batch of exactly the compiled shape; it returns float32 (batch, dim).
    At most `concurrent_calls` callers run at once (each on its own request); more wait.
    """

    compiled: object
    concurrent_calls: int
    precision: str  # what OpenVINO reports it runs at (f32 or bf16)
    convert_seconds: float
    compile_seconds: float
    version: str
    converted: object = None  # the converted (uncompiled) model, to compile other batch sizes from
    config: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self._requests: queue.Queue = queue.Queue()
        for _ in range(self.concurrent_calls):
            self._requests.put(self.compiled.create_infer_request())

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        request = self._requests.get()
        try:
            # share_inputs: the request reads the caller's array in place (no copy); the output is
            # a copy (share_outputs=False), so the request can be reused by another thread.
            result = request.infer(pixels, share_inputs=True, share_outputs=False)
            return np.asarray(result[0], dtype=np.float32)
        finally:
            self._requests.put(request)

    def for_batch(self, batch: int) -> Optional[OpenVINOForward]:
        """The same network compiled for batches of `batch` images (a copy of the converted model
        reshaped, same config), or None when it does not reshape or compile (the caller pads)."""
        if self.converted is None:
            return None
        ov = _import_openvino()

        start = time.perf_counter()
        try:
            model = self.converted.clone()
            shape = list(model.inputs[0].get_partial_shape().to_shape())
            model.reshape({model.inputs[0]: ov.PartialShape([batch, *shape[1:]])})
            compiled = ov.Core().compile_model(model, "CPU", self.config)
        except Exception as exc:  # noqa: BLE001 - a shape baked into the graph: run padded instead
            _LOGGER.info("OpenVINO could not compile batches of %d: %s", batch, _one_line(exc))
            return None
        return OpenVINOForward(
            compiled=compiled,
            concurrent_calls=self.concurrent_calls,
            precision=self.precision,
            convert_seconds=0.0,
            compile_seconds=time.perf_counter() - start,
            version=self.version,
            config=self.config,
        )


def compile_openvino(concrete_function, precision: str = "f32", streams: Optional[int] = None) -> OpenVINOForward:
    """Convert a traced TensorFlow function (fixed input shape) to OpenVINO and compile it for the CPU.

    Raises BackendUnavailable when the package is missing and ConversionFailed when the function
    does not convert or compile.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    version = openvino_version()
    if version is None:
        raise BackendUnavailable("the openvino package is not installed (pip install openvino)")
    ov = _import_openvino()

    _switch_off_converter_telemetry()
    start = time.perf_counter()
    try:
        model = ov.convert_model(concrete_function)
    except Exception as exc:  # noqa: BLE001 - any converter failure means: this network does not convert
        raise ConversionFailed(f"openvino.convert_model failed: {_one_line(exc)}") from exc
    converted = time.perf_counter()
    config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": precision}
    if streams:
        config["NUM_STREAMS"] = str(streams)
    try:
        compiled = ov.Core().compile_model(model, "CPU", config)
    except Exception as exc:  # noqa: BLE001
        raise ConversionFailed(f"OpenVINO could not compile the converted network for the CPU: {_one_line(exc)}") from exc
    compiled_at = time.perf_counter()
    try:
        calls = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    except Exception:  # noqa: BLE001 - an older runtime without the property
        calls = 1
    try:
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
        actual = str(hint.get_type_name() if hasattr(hint, "get_type_name") else hint).lower()
    except Exception:  # noqa: BLE001 - an older runtime without the property
        actual = precision
    return OpenVINOForward(
        compiled=compiled,
        concurrent_calls=max(1, calls),
        precision=actual,
        convert_seconds=converted - start,
        compile_seconds=compiled_at - converted,
        version=version,
        converted=model,
        config=config,
    )
