"""Power and token sources. Each module reads one source and returns `Sample`s; see `collectors.base`."""

from collectors.base import Collector, CollectorError, CollectorFactory, Sample

__all__ = ["Collector", "CollectorError", "CollectorFactory", "Sample"]
