"""Benchmarks of the embedding job against the bare model and a plain Beam RunInference peer.

`python -m benchmarks.run` measures; `python -m benchmarks.profile` profiles. Inputs are derived
from the shared data into `benchmarks/work/` (gitignored); results go to `benchmarks/results/`.
"""
