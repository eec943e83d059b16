"""Embedding: model specs and loading, inference backends, image decoding, devices, the batching DoFns and the public EmbedText/EmbedImages API."""
