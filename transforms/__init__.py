"""Beam transforms of the embedding job: read, decode, embed, write."""
