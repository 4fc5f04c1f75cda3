"""The metrics writer moved to `protocols/metrics.py` (the env server writes through it too)."""

from protocols.metrics import MetricsWriter

__all__ = ["MetricsWriter"]
