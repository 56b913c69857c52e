"""Benchmark harness: tasks, probes on precomputed embeddings, metrics and reports."""
