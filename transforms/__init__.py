"""Beam transforms of the embedding job: read, decode, embed, write."""

from transforms import quiet as _quiet  # noqa: E402 - hides TensorFlow's C++ start-up lines (see transforms.quiet)

_quiet.install()
