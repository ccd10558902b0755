"""Pods grouped into Deployments by an index lookup give the same owners as checking every selector."""

from __future__ import annotations

import numpy as np

from adapter.catalogue import DEPLOYMENTS, PODS
from adapter.objects import KubeObject, StaticObjectIndex
from adapter.pipeline import deployment_of_pods
from adapter.selectors import parse_selector


def _fleet(rng: np.random.Generator) -> tuple[StaticObjectIndex, list[tuple[str, str]]]:
    objects: list[KubeObject] = []
    selectors = ["app={app}", "app in ({app},other),tier=gpu", "tier=gpu,!canary", "app={app},track!=canary"]
    for d in range(60):
        namespace = f"ns-{d % 3}"
        text = selectors[d % len(selectors)].format(app=f"app-{d % 20}")
        objects.append(KubeObject(DEPLOYMENTS, namespace, f"deploy-{d}", pod_selector=parse_selector(text)))
    pods = []
    for p in range(600):
        namespace = f"ns-{rng.integers(3)}"
        labels = {"app": f"app-{rng.integers(25)}", "tier": str(rng.choice(["gpu", "cpu"]))}
        if rng.random() < 0.2:
            labels["canary"] = "true"
        if rng.random() < 0.3:
            labels["track"] = str(rng.choice(["canary", "stable"]))
        objects.append(KubeObject(PODS, namespace, f"pod-{p}", labels=labels))
        pods.append((namespace, f"pod-{p}"))
    return StaticObjectIndex(objects), pods


def test_index_lookup_finds_the_same_first_matching_deployment_as_a_scan() -> None:
    index, pods = _fleet(np.random.default_rng(0))
    deployments = index.objects(DEPLOYMENTS, None)
    labels = {(o.namespace, o.name): o.labels for o in index.objects(PODS, None)}
    expected = {}
    for namespace, pod in pods:
        owner = next(
            (
                d.name
                for d in deployments
                if d.namespace == namespace
                and d.pod_selector is not None
                and d.pod_selector.matches(labels[(namespace, pod)])
            ),
            None,
        )
        if owner is not None:
            expected[(namespace, pod)] = owner
    found = deployment_of_pods(index, pods)
    assert found == expected
    assert 100 < len(found) < len(pods)  # the fleet has owned and unowned pods
