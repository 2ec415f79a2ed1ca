"""Evaluation: per-category tool-call accuracy, invalid-call rate, latency, tokens and size."""
