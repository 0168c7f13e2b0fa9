"""Evaluation: metrics and per-stage reports (slice- and volume-level, internal and external)."""
