"""Evaluation libraries: zero-shot metrics, held-out checks, batch-1 latency timing."""
