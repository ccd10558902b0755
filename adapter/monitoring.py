"""The alert rules ship in two forms from one source: `apiservice/monitoring/wattscale.rules.yaml` (a plain
Prometheus rules file) and the PrometheusRule beside it, which this module generates.

    python -m adapter.monitoring            # rewrite apiservice/monitoring/prometheusrule.yaml
    python -m adapter.monitoring --check    # exit 1 if it differs from what the rules file makes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

MONITORING_DIR = Path("apiservice") / "monitoring"
RULES_FILE = "wattscale.rules.yaml"
PROMETHEUS_RULE_FILE = "prometheusrule.yaml"
_HEADER = (
    f"# GENERATED from {RULES_FILE} by `python -m adapter.monitoring`: edit that file, not this one.\n"
    "# prometheus-operator's form of the same rules; label it to match your Prometheus' ruleSelector.\n"
)


def prometheus_rule(rules: dict[str, Any], *, namespace: str = "wattscale") -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "wattscale",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "wattscale", "app.kubernetes.io/component": "alerts"},
        },
        "spec": {"groups": rules["groups"]},
    }


def render(rules_text: str) -> str:
    document = prometheus_rule(yaml.safe_load(rules_text))
    return _HEADER + yaml.safe_dump(document, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=MONITORING_DIR, help="the monitoring folder")
    parser.add_argument("--check", action="store_true", help="only check that the generated file is current")
    args = parser.parse_args(argv)
    wanted = render((args.dir / RULES_FILE).read_text())
    target = args.dir / PROMETHEUS_RULE_FILE
    if args.check:
        current = target.read_text() if target.exists() else ""
        if current != wanted:
            print(f"{target} is out of date: run python -m adapter.monitoring", file=sys.stderr)
            return 1
        return 0
    target.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
