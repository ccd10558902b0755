"""Domain errors inside, Kubernetes `Status` at the edge.

    WattscaleError
     +-- BadQueryError          400 BadRequest: malformed path, selector or parameter
     +-- UnauthorizedError      401 Unauthorized: no identity could be established
     +-- ForbiddenError         403 Forbidden: the identity may not do this
     +-- MetricNotFoundError    404 NotFound: unknown metric, object, or no value for it
     +-- StaleMetricError       503 ServiceUnavailable: the value exists but is older than max age
     +-- NotReadyError          503 ServiceUnavailable: caches or the first estimate are not there yet
     +-- ConfigError            bad settings at start-up; the CLI exits 2 and lists every problem

Messages follow custom-metrics-apiserver's wording where one exists, because users search for them.
"""

from __future__ import annotations

from collections.abc import Sequence


class WattscaleError(Exception):
    """Base of every error the adapter raises on purpose."""

    status_code = 500
    reason = "InternalError"


class BadQueryError(WattscaleError):
    status_code = 400
    reason = "BadRequest"


class UnauthorizedError(WattscaleError):
    status_code = 401
    reason = "Unauthorized"


class ForbiddenError(WattscaleError):
    status_code = 403
    reason = "Forbidden"


class MetricNotFoundError(WattscaleError):
    status_code = 404
    reason = "NotFound"

    @classmethod
    def for_metric(cls, resource: str, metric: str) -> MetricNotFoundError:
        return cls(f"the server could not find the metric {metric} for {resource}")

    @classmethod
    def for_object(cls, resource: str, metric: str, name: str) -> MetricNotFoundError:
        return cls(f"the server could not find the metric {metric} for {resource} {name}")

    @classmethod
    def for_selector(cls, resource: str, metric: str, selector: str) -> MetricNotFoundError:
        return cls(
            f"the server could not find the metric {metric} for {resource} * with selector {selector or '<all>'}"
        )


class StaleMetricError(WattscaleError):
    status_code = 503
    reason = "ServiceUnavailable"


class NotReadyError(WattscaleError):
    status_code = 503
    reason = "ServiceUnavailable"


class ConfigError(WattscaleError):
    """Every problem found in the settings, each prefixed with its key."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"config: {len(self.problems)} problem(s): " + "; ".join(self.problems))
