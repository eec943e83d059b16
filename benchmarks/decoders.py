"""The job's image stage with each decoder, interleaved with the bare forward passes (issue 10).

    python -m benchmarks.decoders [--rounds 5] [--images 640]

In one process, per network (scenario a: MobileNet 0.25 with the shared weights; b: MobileNetV2
with random weights), a round times, back to back: TensorFlow's bare forward pass (the better of
one and two batches in flight, as `benchmarks.run`'s limit) and OpenVINO's (pixels decoded
beforehand, one batch in flight per stream as in `benchmarks.run`'s limit OV),
then the job's own image stage (`transforms.embed.dofns.EmbedImageBatchesFn`: read, decode, embed, build
the output tables, on OpenVINO) with `--image-decoder pillow` and with `opencv`, on the
benchmark's 500x375 photos. Rounds are interleaved so the load of a shared machine hits every
setting alike; medians of img/s are reported with the ratios job / bare TF and job / bare OV.
Results go to benchmarks/results/decoders-<time>.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import statistics
import time

import numpy as np

from benchmarks import inputs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _bare(embedder, pixels: np.ndarray, calls: int) -> float:
    """img/s of the bare forward pass over `pixels` in batches, `calls` batches in flight."""
    size = embedder.spec.batch_size
    batches = [pixels[i : i + size] for i in range(0, len(pixels) - size + 1, size)]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(calls) as pool:
        list(pool.map(embedder.embed, batches))
    return len(batches) * size / (time.perf_counter() - started)


def _stage(spec, schema, refs) -> float:
    """img/s of the job's image stage (EmbedImageBatchesFn) over `refs`, one bundle."""
    from transforms.embed.dofns import EmbedImageBatchesFn

    fn = EmbedImageBatchesFn(spec, schema)
    fn.setup()
    try:
        fn.start_bundle()
        started = time.perf_counter()
        rows = 0
        outputs = list(fn.process(refs)) + [getattr(o, "value", o) for o in fn.finish_bundle()]
        for out in outputs:
            rows += getattr(out, "num_rows", 0)
        seconds = time.perf_counter() - started
    finally:
        fn.teardown()
    assert rows == len(refs), (rows, len(refs))
    return len(refs) / seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decoders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--scenarios", default="a,b")
    parser.add_argument("--work-dir", default=str(inputs.DEFAULT_WORK_DIR))
    parser.add_argument("--shared-data", default=str(inputs.DEFAULT_SHARED_DATA))
    args = parser.parse_args(argv)

    import dataclasses

    from transforms.embed.decode import decode_image
    from transforms.embed.models import ImageModelSpec, load_image_embedder
    from transforms.records import IMAGE, ImageRef, embedding_schema

    shared, work = pathlib.Path(args.shared_data), pathlib.Path(args.work_dir)
    photos = inputs.make_photos(shared, work, args.images)
    refs = [ImageRef(p.name, str(p)) for p in photos]
    networks = {
        "a": ImageModelSpec("MobileNet", weights=str(shared / "weights" / "mobilenet_2_5_224_tf_no_top.h5"), alpha=0.25),
        "b": ImageModelSpec("MobileNetV2", weights="none"),
    }
    report = {
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_at_start": os.getloadavg(),
        "images": len(refs),
        "rounds": args.rounds,
        "scenarios": {},
    }
    for key in [k.strip() for k in args.scenarios.split(",") if k.strip()]:
        base = networks[key]
        tf_ = load_image_embedder(dataclasses.replace(base, backend="tensorflow"))
        ov = load_image_embedder(dataclasses.replace(base, backend="openvino"))
        pixels = np.stack([decode_image(p.read_bytes(), tf_.input_size) for p in photos])
        schema = embedding_schema(IMAGE, ov.dimension, ())
        specs = {d: dataclasses.replace(base, backend="openvino", decoder=d) for d in ("pillow", "opencv")}
        for spec in specs.values():  # warm up: convert once per spec (the shared model), trace, first calls
            _stage(spec, schema, refs[:64])
        _bare(tf_, pixels[:64], 1)
        _bare(tf_, pixels[:64], 2)
        _bare(ov, pixels[:64], ov.concurrent_calls)
        rates: dict[str, list[float]] = {"bare_tf": [], "bare_ov": [], "job_pillow": [], "job_opencv": []}
        for round_ in range(args.rounds):
            rates["bare_tf"].append(max(_bare(tf_, pixels, 1), _bare(tf_, pixels, 2)))  # TensorFlow's better way
            rates["bare_ov"].append(_bare(ov, pixels, ov.concurrent_calls))
            for decoder, spec in specs.items():
                rates[f"job_{decoder}"].append(_stage(spec, schema, refs))
            print(f"[{key}] round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        ratios = {f"job_{d}/{b}": med[f"job_{d}"] / med[f"bare_{b}"] for d in ("pillow", "opencv") for b in ("tf", "ov")}
        report["scenarios"][key] = {"network": base.model, "img_per_s": rates, "median": med, "ratios": ratios}
        print(f"[{key}] medians img/s: " + ", ".join(f"{k} {v:.0f}" for k, v in med.items()))
        print(f"[{key}] ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()), flush=True)
    report["loadavg_at_end"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / f"decoders-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"load average {report['loadavg_at_start'][0]:.1f} -> {report['loadavg_at_end'][0]:.1f}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
