"""Helpers for the real peers of integration tests: a Prometheus server (Debian package) and exporters that replay
fixture samples with counters advancing in real time.

Prometheus runs as a subprocess on loopback with `scrape_interval: 1s`; the fixture waits on
`/-/ready`. Exporters run in the test's event loop, so a test changes what they serve directly.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import aiohttp
import replay_fixtures as replay
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from collectors.base import Sample
from collectors.prometheus_text import ExporterCollector
from collectors.support import build_settings


@dataclass
class ReplayExporter:
    """Serves `/metrics` rendered from the current time; keeps every (time, text) it served."""

    render: Callable[[float], str]
    served: list[tuple[float, str]] = field(default_factory=list)
    hang: bool = False
    url: str = ""
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def stop_hanging(self) -> None:
        self.hang = False
        self._release.set()
        self._release = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        if self.hang:
            await self._release.wait()
        now = time.time()
        text = self.render(now)
        self.served.append((now, text))
        return web.Response(text=text, content_type="text/plain")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/metrics"

    async def stop(self) -> None:
        self.stop_hanging()
        if self._runner is not None:
            await self._runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for(condition: Callable[[], Awaitable[bool]], *, timeout_seconds: float, what: str) -> None:
    """Poll `condition` until it holds; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Target:
    url: str
    labels: Mapping[str, str]
    job: str


class StartPrometheus(Protocol):
    """Starts a Prometheus scraping `targets` every second (and evaluating `rule_files` every second,
    when given); returns its base URL once it is ready."""

    def __call__(self, targets: Sequence[Target], rule_files: Sequence[Path] = ()) -> Awaitable[str]: ...


async def prometheus_has(base_url: str, promql: str) -> bool:
    """True once `promql` returns at least one series."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/api/v1/query", params={"query": promql}) as response,
    ):
        answer = await response.json()
    return bool(answer.get("data", {}).get("result"))


async def run_collect_once(
    config: Mapping[str, object], tmp_dir: Path
) -> tuple[int, list[dict[str, Any]], str]:
    """Run `wattscale collect --config F --once` as its own process (the test's event loop keeps
    serving the peers meanwhile); returns (exit status, the JSON lines, stderr)."""
    config_file = tmp_dir / f"collect-{time.monotonic_ns()}.yaml"
    config_file.write_text(yaml.safe_dump(dict(config)))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapter.cli",
        "collect",
        "--config",
        str(config_file),
        "--once",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    return process.returncode, lines, stderr.decode()


def load_unit_helper(name: str) -> ModuleType:
    """A helper module of tests/unit/collectors (e.g. the Redfish mockup), loaded by path: the two
    test folders are not packages, so neither can import the other's modules by name."""
    path = Path(__file__).resolve().parents[1] / "unit" / "collectors" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"wattscale_unit_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


StartExporter = Callable[[Callable[[float], str]], Awaitable[ReplayExporter]]


def make_collector(cls: type[ExporterCollector], **raw: object) -> ExporterCollector:
    """A collector of `cls` with its own registry and short retries."""
    settings = build_settings(cls.settings_cls, cls.__name__, {"backoff_seconds": 0.05, **raw})
    return cls(cls.__name__, settings, registry=CollectorRegistry())


async def start_replayed_fleet(
    replay_exporter: StartExporter, start_prometheus: StartPrometheus, rule_files: Sequence[Path] = ()
) -> tuple[dict[str, ReplayExporter], str, float]:
    """The replayed DCGM, vLLM (two pods sharing one GPU) and Kepler exporters behind a real Prometheus,
    each scraped at least twice; returns the exporters, Prometheus's URL and the replay's start."""
    start = time.time()
    exporters = {
        "dcgm": await replay_exporter(lambda now: replay.render_dcgm(now, start)),
        "vllm": await replay_exporter(lambda now: replay.render_vllm(now, start)),
        "vllm-sharing": await replay_exporter(
            lambda now: replay.render_vllm(now, start, replay.SHARING_POD_TOKENS_PER_SECOND)
        ),
        "kepler": await replay_exporter(lambda now: replay.render_kepler_legacy(now, start)),
    }
    targets = [
        Target(exporters["dcgm"].url, {}, "dcgm"),
        Target(exporters["vllm"].url, {**replay.POD, "node": replay.NODE}, "vllm"),
        Target(exporters["vllm-sharing"].url, {**replay.SHARING_POD, "node": replay.NODE}, "vllm-sharing"),
        Target(exporters["kepler"].url, {"node": replay.NODE}, "kepler"),
    ]
    base_url = await start_prometheus(targets, rule_files)

    async def scraped_twice() -> bool:
        return all(
            [
                await prometheus_has(base_url, "count_over_time(DCGM_FI_DEV_POWER_USAGE[1m]) > 1"),
                await prometheus_has(base_url, "count_over_time(vllm:generation_tokens_total[1m]) > 1"),
                await prometheus_has(
                    base_url, "count_over_time(kepler_container_package_joules_total[1m]) > 1"
                ),
            ]
        )

    await wait_for(scraped_twice, timeout_seconds=60, what="two scrapes of every exporter")
    return exporters, base_url, start


async def poll_for_span(collectors: Sequence[ExporterCollector], span_seconds: float) -> list[Sample]:
    """Poll every collector until their generation-token samples span `span_seconds`."""
    samples: list[Sample] = []

    async def spans() -> bool:
        for collector in collectors:
            samples.extend(await collector.collect())
        stamps = [s.timestamp_seconds for s in samples if s.metric == "generation_tokens_total"]
        return bool(stamps) and max(stamps) - min(stamps) >= span_seconds

    await wait_for(spans, timeout_seconds=60, what=f"samples spanning {span_seconds} s")
    return samples
