"""Plumbing with no domain words: the one way to write --out, the cache root, progress bars, process settings."""
