"""Pure estimators over pandas frames: counter rates, watts per token, attribution, power model, headroom.

Nothing in this package does I/O or reads a clock: time arrives as data (`timestamp_seconds`,
`now_seconds`), so every result is reproducible from its inputs. The one exception is
`estimators.power_curve`, which reads a table shipped inside the package (read-only package data).
"""

from estimators.fleet import FleetEstimate, aggregate_pods, estimate_fleet, replicas_within_budget

__all__ = ["FleetEstimate", "aggregate_pods", "estimate_fleet", "replicas_within_budget"]
