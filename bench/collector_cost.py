"""CPU cost of one poll for 1,000 pods of Kepler + vLLM data, per collector and mode.

    python bench/collector_cost.py [--pods 1000] [--repeat 5]

Scrape mode: one Kepler `/metrics` answer holding every pod (rewrite generation: 4 RAPL zones per
pod, so 4,000 series) and 1,000 vLLM answers (the real fixture text, one per pod), each parsed with
prometheus-client's parser and translated. Prometheus mode: the instant-query JSON Prometheus
would return for the same series, plus the per-name `timestamp()` answers. HTTP is left out: it
is the same bytes either way. Prints CPU milliseconds (process time) per poll, best of `repeat`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from collectors.kepler import KeplerCollector
from collectors.prometheus_api import parse_query_answer
from collectors.prometheus_text import ExporterCollector, parse_exposition
from collectors.support import Series
from collectors.vllm import VllmCollector

VLLM_TEXT = (
    Path(__file__).resolve().parents[1] / "tests/fixtures/llm-servers/datadog-vllm-metrics.txt"
).read_text()


def kepler_text(pods: int, elapsed_seconds: float) -> str:
    lines = ["# TYPE kepler_pod_cpu_joules_total counter"]
    for i in range(pods):
        for zone, watts in (("package", 30.0), ("core", 20.0), ("uncore", 5.0), ("dram", 10.0)):
            labels = (
                f'node_name="node-{i // 8}",pod_id="uid-{i}",pod_name="llama-{i}",'
                f'pod_namespace="llm",state="running",zone="{zone}"'
            )
            lines.append(f"kepler_pod_cpu_joules_total{{{labels}}} {watts * elapsed_seconds}")
    return "\n".join(lines) + "\n"


def vllm_text(tokens: float) -> str:
    return VLLM_TEXT.replace(
        'vllm:generation_tokens_total{model_name="facebook/opt-125m"} 7.0',
        f'vllm:generation_tokens_total{{model_name="facebook/opt-125m"}} {tokens}',
    )


def query_answer(series: list[Series], at_seconds: float) -> bytes:
    result = [
        {"metric": {"__name__": s.name, **s.labels}, "value": [at_seconds, repr(s.value)]} for s in series
    ]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


def timestamps_answer(series: list[Series], name: str, at_seconds: float) -> bytes:
    result = [
        {"metric": dict(s.labels), "value": [at_seconds, repr(at_seconds - 0.5)]}
        for s in series
        if s.name == name
    ]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


def best_cpu_ms(poll: Callable[[int], int], repeat: int) -> tuple[float, int]:
    best, samples = float("inf"), 0
    for attempt in range(repeat):
        started = time.process_time()
        samples = poll(attempt)
        best = min(best, (time.process_time() - started) * 1000.0)
    return best, samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    pods = args.pods

    kepler = KeplerCollector.from_settings("kepler", {"scrape_urls": ["http://kepler:28282/metrics"]})
    vllm = VllmCollector.from_settings("vllm", {"scrape_urls": ["http://vllm:8000/metrics"]})

    def kepler_scrape(step: int) -> int:
        series = parse_exposition(kepler_text(pods, 10.0 + step), kepler._keep)
        return len(kepler.translate(series, 0.0))

    def vllm_scrape(step: int) -> int:
        series: list[Series] = []
        for i in range(pods):
            for s in parse_exposition(vllm_text(100.0 * step + i), vllm._keep):
                series.append(Series(s.name, {**s.labels, "namespace": "llm", "pod": f"llama-{i}"}, s.value))
        return len(vllm.translate(series, 0.0))

    def prometheus_mode(collector: ExporterCollector, series: list[Series]) -> Callable[[int], int]:
        names = sorted(collector.query_names())
        answers = [query_answer(series, 1e9)] + [timestamps_answer(series, n, 1e9) for n in names]

        def poll(step: int) -> int:
            found = parse_query_answer(answers[0], "q")
            stamps = {}
            for name, body in zip(names, answers[1:], strict=True):
                for s in parse_query_answer(body, "t"):
                    stamps[(name, frozenset(s.labels.items()))] = s.value
            merged = [
                Series(s.name, s.labels, s.value, stamps.get((s.name, frozenset(s.labels.items()))))
                for s in found
            ]
            return len(collector.translate(merged, 0.0))

        return poll

    kepler_series = parse_exposition(kepler_text(pods, 10.0), kepler._keep)
    vllm_series = [
        Series(s.name, {**s.labels, "namespace": "llm", "pod": f"llama-{i}"}, s.value)
        for i in range(pods)
        for s in parse_exposition(vllm_text(float(i)), vllm._keep)
    ]
    rows = [
        ("kepler", "scrape", kepler_scrape, len(kepler_text(pods, 10.0))),
        ("vllm", "scrape", vllm_scrape, pods * len(vllm_text(0.0))),
        ("kepler", "prometheus", prometheus_mode(kepler, kepler_series), 0),
        ("vllm", "prometheus", prometheus_mode(vllm, vllm_series), 0),
    ]
    print(f"# {pods} pods, best of {args.repeat} polls, CPU time of this process")
    print(f"{'collector':<10} {'mode':<11} {'cpu_ms_per_poll':>16} {'samples':>8} {'text_bytes':>11}")
    total = {"scrape": 0.0, "prometheus": 0.0}
    for name, mode, poll, size in rows:
        cpu_ms, samples = best_cpu_ms(poll, args.repeat)
        total[mode] += cpu_ms
        print(f"{name:<10} {mode:<11} {cpu_ms:>16.1f} {samples:>8} {size or '':>11}")
    for mode, cpu_ms in total.items():
        print(
            f"# kepler + vllm, {mode}: {cpu_ms:.1f} CPU ms per poll ({cpu_ms / pods * 1000:.1f} us per pod)"
        )


if __name__ == "__main__":
    main()
