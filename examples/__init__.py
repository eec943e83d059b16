"""Examples built on the package; not part of it (not installed, not shipped to workers)."""
