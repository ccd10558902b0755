"""Fixture samples rendered as exporters would serve them, with counters advancing in real time.

Each `render_*` returns `/metrics` text for time `now_seconds`, given the replay's start time. The
advancing series carry round numbers so a test knows what every counter implies:
GPU 0 of the DCGM fixture draws 250 W and is time-sliced between pods llm/llama-0 and llm/llama-1,
so dcgm-exporter serves each of its series twice, once per pod. llama-0's vLLM server generates
500 tokens/s and reads 1000 prompt tokens/s, llama-1's generates 1500 tokens/s; Kepler gives
llama-0 30 W package + 10 W dram and measures 600 W for the whole node (platform energy).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DCGM_TEXT = (FIXTURES / "dcgm/datadog-dcgm-exporter-metrics.txt").read_text()
VLLM_TEXT = (FIXTURES / "llm-servers/datadog-vllm-metrics.txt").read_text()
KEPLER_RANGE = json.loads((FIXTURES / "kepler/kepler-0.7-legacy-prometheus-query-range.json").read_text())

NODE = "424773df46e0"
GPU_UUID = "GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e"
POD = {"namespace": "llm", "pod": "llama-0"}
SHARING_POD = {"namespace": "llm", "pod": "llama-1"}
SHARING_POD_TOKENS_PER_SECOND = 1500.0
GPU_POWER_WATTS = 250.0
GPU_ENERGY_START_MILLIJOULES = 128996013
GENERATION_TOKENS_PER_SECOND = 500.0
PROMPT_TOKENS_PER_SECOND = 1000.0
CPU_PACKAGE_WATTS = 30.0
CPU_DRAM_WATTS = 10.0
NODE_PLATFORM_WATTS = 600.0

# Labels Prometheus (and the kepler-model-server's ServiceMonitor) added; an exporter does not serve them.
_TARGET_LABELS = {
    "container",
    "endpoint",
    "instance",
    "job",
    "namespace",
    "pod",
    "service",
    "exported_instance",
}


def dcgm_energy_millijoules(elapsed_seconds: float) -> float:
    return GPU_ENERGY_START_MILLIJOULES + GPU_POWER_WATTS * 1000.0 * elapsed_seconds


def render_dcgm(now_seconds: float, start_seconds: float) -> str:
    """As dcgm-exporter with pod mapping renders a time-sliced GPU: one copy per holding pod."""
    holders = [f',pod="{p["pod"]}",namespace="{p["namespace"]}",container="vllm"' for p in (POD, SHARING_POD)]
    values = {
        "DCGM_FI_DEV_POWER_USAGE{": GPU_POWER_WATTS,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{": dcgm_energy_millijoules(now_seconds - start_seconds),
    }
    lines = []
    for line in DCGM_TEXT.splitlines():
        prefix = next((p for p in values if line.startswith(p)), None)
        if GPU_UUID in line and prefix is not None:
            lines.extend(re.sub(r"\} \S+$", extra + "} " + repr(values[prefix]), line) for extra in holders)
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def generation_tokens(elapsed_seconds: float) -> float:
    return 7.0 + GENERATION_TOKENS_PER_SECOND * elapsed_seconds


def prompt_tokens(elapsed_seconds: float) -> float:
    return 5.0 + PROMPT_TOKENS_PER_SECOND * elapsed_seconds


def render_vllm(now_seconds: float, start_seconds: float, tokens_per_second: float | None = None) -> str:
    elapsed = now_seconds - start_seconds
    tokens = generation_tokens(elapsed) if tokens_per_second is None else 7.0 + tokens_per_second * elapsed
    text = VLLM_TEXT.replace(
        'vllm:generation_tokens_total{model_name="facebook/opt-125m"} 7.0',
        f'vllm:generation_tokens_total{{model_name="facebook/opt-125m"}} {tokens!r}',
    ).replace(
        'vllm:prompt_tokens_total{model_name="facebook/opt-125m"} 5.0',
        f'vllm:prompt_tokens_total{{model_name="facebook/opt-125m"}} {prompt_tokens(elapsed)!r}',
    )
    assert text != VLLM_TEXT
    return text


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def render_kepler_legacy(now_seconds: float, start_seconds: float) -> str:
    """The fixture's last reading of every legacy series, plus the llama-0 container's advancing ones."""
    elapsed = now_seconds - start_seconds
    lines: list[str] = []
    for name, rows in sorted(KEPLER_RANGE.items()):
        lines.append(f"# TYPE {name} {'counter' if name.endswith('_total') else 'gauge'}")
        for series in rows:
            labels = {
                k: v for k, v in series["metric"].items() if k != "__name__" and k not in _TARGET_LABELS
            }
            value = float(series["values"][-1][1])
            if name == "kepler_node_platform_joules_total" and labels["mode"] == "dynamic":
                value += NODE_PLATFORM_WATTS * elapsed
            lines.append(f"{name}{_labels(labels)} {value!r}")
        if name in ("kepler_container_package_joules_total", "kepler_container_dram_joules_total"):
            watts = CPU_PACKAGE_WATTS if "package" in name else CPU_DRAM_WATTS
            labels = {
                "container_id": "0f1e2d",
                "container_name": "vllm",
                "container_namespace": "llm",
                "pod_name": "llama-0",
                "mode": "dynamic",
            }
            lines.append(f"{name}{_labels(labels)} {watts * elapsed!r}")
    return "\n".join(lines) + "\n"
