"""Benchmark harness: datasets (``bench.tasks``), audio decoding (``bench.audio``), embedding and evaluation.

Submodules are imported explicitly by their users; importing this package is cheap.
"""
