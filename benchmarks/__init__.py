"""Benchmarks of the embedding job against the bare model and a plain Beam RunInference peer.

`python -m benchmarks.run` measures the job against them; `benchmarks.scale` its memory as the corpus
grows, `benchmarks.split` one big file on 1 vs 2 workers, `benchmarks.backends` the inference
backends side by side. Inputs are derived
from the shared data into `benchmarks/work/` (gitignored); results go to `benchmarks/results/`.
"""
