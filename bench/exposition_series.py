"""How many series `/metrics/power` emits, and how long a scrape takes, for a simulated fleet run through the
real pipeline (collector -> estimators -> store) and the real exposition.

    python bench/exposition_series.py --pods 1000

The fleet: `--pods` one-GPU pods in Deployments of 20 (5 namespaces), on 8-GPU nodes, 16 nodes per rack.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapter.catalogue import DEPLOYMENTS, NAMESPACES, NODES, PODS
from adapter.exposition import power_registry
from adapter.objects import KubeObject, StaticObjectIndex
from adapter.pipeline import Pipeline
from adapter.selectors import parse_selector
from adapter.selfmetrics import SelfMetrics
from adapter.settings import Settings
from adapter.store import MetricStore
from collectors.simulated import Fleet, SimNode, SimPod, SimulatedCollector, SimulatedSettings

PODS_PER_DEPLOYMENT = 20
NAMESPACE_COUNT = 5
NODES_PER_RACK = 16


def fleet_and_index(pods: int) -> tuple[Fleet, StaticObjectIndex, list[dict[str, object]]]:
    node_count = (pods + 7) // 8
    nodes = tuple(SimNode(f"node-{i}", f"rack-{i // NODES_PER_RACK}", 8) for i in range(node_count))
    sim_pods = []
    objects = [KubeObject(NODES, "", node.name, {}) for node in nodes]
    for i in range(pods):
        deployment = f"model-{i // PODS_PER_DEPLOYMENT}"
        namespace = f"team-{(i // PODS_PER_DEPLOYMENT) % NAMESPACE_COUNT}"
        sim_pods.append(SimPod(namespace, f"{deployment}-{i}", f"node-{i // 8}", 1, 0.5, {"app": deployment}))
        objects.append(
            KubeObject(PODS, namespace, f"{deployment}-{i}", {"app": deployment}, node=f"node-{i // 8}")
        )
    for d in range((pods + PODS_PER_DEPLOYMENT - 1) // PODS_PER_DEPLOYMENT):
        namespace = f"team-{d % NAMESPACE_COUNT}"
        selector = parse_selector(f"app=model-{d}")
        objects.append(
            KubeObject(DEPLOYMENTS, namespace, f"model-{d}", {}, pod_selector=selector, replicas=20)
        )
    objects += [KubeObject(NAMESPACES, "", f"team-{n}", {}) for n in range(NAMESPACE_COUNT)]
    racks = [
        {"name": f"rack-{r}", "cap_watts": 60000}
        for r in range((node_count + NODES_PER_RACK - 1) // NODES_PER_RACK)
    ]
    return Fleet(nodes, tuple(sim_pods)), StaticObjectIndex(objects), racks


async def measure(pods: int) -> None:
    fleet, index, racks = fleet_and_index(pods)
    now = [time.time()]
    clock = lambda: now[0]  # noqa: E731 - a clock the bench advances
    collector = SimulatedCollector("simulated", SimulatedSettings(), fleet=fleet, clock=clock)
    settings = Settings.from_mapping({"window_seconds": 60, "racks": racks})
    store = MetricStore(max_age_seconds=120, clock=clock)
    pipeline = Pipeline(
        [collector], store=store, index=index, settings=settings, self_metrics=SelfMetrics(), clock=clock
    )
    for _ in range(3):  # counters need two polls for a rate
        await pipeline.poll(collector)
        now[0] += 5.0
    await pipeline.estimate_once()
    registry = power_registry(store, clock=clock)
    started = time.perf_counter()
    body = generate_latest(registry)
    scrape_ms = (time.perf_counter() - started) * 1000
    per_family = Counter(
        family.name for family in text_string_to_metric_families(body.decode()) for _ in family.samples
    )
    print(f"pods={pods} series={sum(per_family.values())} bytes={len(body)} render_ms={scrape_ms:.1f}")
    for name, count in sorted(per_family.items()):
        print(f"  {name:55s} {count}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1000)
    asyncio.run(measure(parser.parse_args().pods))


if __name__ == "__main__":
    main()
