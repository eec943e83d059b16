"""`python -m benchmarks.backends`: TensorFlow, OpenVINO (f32, bf16) and ONNX Runtime side by side.

The same traced forward pass of the job (uint8 batch -> preprocess_input -> headless network) run
by each runtime on the same ready batch, **interleaved** (one timed round of each, repeated, the
median kept) so that the load of a shared machine hits all of them alike. ONNX Runtime is not a
dependency of the job: install it beside (`pip install --target DIR --no-deps onnxruntime==1.31.1
tf2onnx==1.17.0 onnx==1.23.2` and put DIR on PYTHONPATH) or it is reported as not installed.
Fidelity is against TensorFlow: max |difference| / max |TF value| and the minimum cosine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np

__all__ = ["main"]


def _rate(fn, batch: int, calls: int, threads: int) -> float:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(lambda _: fn(), range(calls)))
        return calls * batch / (time.perf_counter() - start)


def _fidelity(got: np.ndarray, ref: np.ndarray) -> dict:
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    return {"max_relative_difference": float(np.abs(got - ref).max() / np.abs(ref).max()), "min_cosine": float(cos.min())}


def measure(network: str, alpha, weights: str, batch: int, rounds: int, calls: int) -> dict:
    from transforms.embed.models import ImageModelSpec, load_image_embedder

    spec = ImageModelSpec(network, weights=weights, alpha=alpha, batch_size=batch, backend="tensorflow")
    tf_ = load_image_embedder(spec)
    size = tf_.input_size
    pixels = np.random.RandomState(0).randint(0, 256, (batch, *size, 3)).astype(np.uint8)
    ref = tf_.embed(pixels)
    runners, report = {"tensorflow": (lambda: tf_.embed(pixels), 1)}, {"network": tf_.model_name, "batch": batch}
    report["tensorflow"] = {}
    for precision in ("f32", "bf16"):
        start = time.perf_counter()
        ov = load_image_embedder(dataclasses.replace(spec, backend="openvino", precision=precision))
        name = f"openvino_{ov.precision}"
        report[name] = {"load_seconds": time.perf_counter() - start, **ov.backend_details, **_fidelity(ov.embed(pixels), ref)}
        runners[name] = (lambda ov=ov: ov.embed(pixels), ov.concurrent_calls)
    try:
        sys.path.extend(p for p in os.environ.get("EXTRA_PATH", "").split(":") if p)
        import onnxruntime as ort
        import tf2onnx

        start = time.perf_counter()
        forward = load_image_embedder(spec)._forward
        proto, _ = tf2onnx.convert.from_function(forward, input_signature=forward.input_signature, opset=17)
        convert = time.perf_counter() - start
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(session=session, name=name):
            return session.run(None, {name: pixels})[0]

        report["onnxruntime"] = {
            "version": ort.__version__,
            "tf2onnx": tf2onnx.__version__,
            "convert_seconds": convert,
            **_fidelity(run(), ref),
        }
        runners["onnxruntime"] = (run, 1)
    except ImportError as exc:
        report["onnxruntime"] = {"error": f"not installed ({exc})"}
    samples = {k: [] for k in runners}
    for fn, threads in runners.values():
        _rate(fn, batch, threads * 2, threads)  # warm-up
    for _ in range(rounds):
        for key, (fn, threads) in runners.items():
            samples[key].append(_rate(fn, batch, calls * threads, threads))
    for key, values in samples.items():
        report[key]["images_per_second_median"] = statistics.median(values)
        report[key]["images_per_second_all"] = [round(v, 1) for v in values]
        report[key]["x_tensorflow"] = statistics.median(values) / statistics.median(samples["tensorflow"])
    report["loadavg"] = os.getloadavg()
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="MobileNet")
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=4, help="model calls per timed round (per concurrent caller)")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    report = measure(args.network, args.alpha, args.weights, args.batch, args.rounds, args.calls)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
