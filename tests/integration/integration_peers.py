"""Helpers for the real peers of integration tests: a Prometheus server (Debian package) and exporters that replay
fixture samples with counters advancing in real time.

Prometheus runs as a subprocess on loopback with `scrape_interval: 1s`; the fixture waits on
`/-/ready`. Exporters run in the test's event loop, so a test changes what they serve directly.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
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


def scrape_config(targets: Sequence[Target]) -> dict[str, Any]:
    """A Prometheus scrape configuration, each target every second (VictoriaMetrics reads it too)."""
    scrape_configs = []
    for target in targets:
        host_port, _, path = target.url.removeprefix("http://").partition("/")
        scrape_configs.append(
            {
                "job_name": target.job,
                "metrics_path": "/" + path,
                "static_configs": [{"targets": [host_port], "labels": dict(target.labels)}],
            }
        )
    return {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": scrape_configs,
    }


async def wait_until_answers(process: asyncio.subprocess.Process, url: str, log_file: Path) -> None:
    """Wait until `url` answers 200; fail with the log's tail if the process exits first."""

    async def ready() -> bool:
        if process.returncode is not None:
            log = await asyncio.to_thread(log_file.read_text)
            raise AssertionError(f"{url}: server exited: {log[-2000:]}")
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for(ready, timeout_seconds=60, what=f"{url} to answer")


async def stop_process(process: asyncio.subprocess.Process, timeout_seconds: float = 20.0) -> None:
    """Terminate (SIGTERM), and kill what has not exited `timeout_seconds` later."""
    if process.returncode is not None:
        return
    process.terminate()
    try:
        async with asyncio.timeout(timeout_seconds):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


class StartPrometheus(Protocol):
    """Starts a Prometheus scraping `targets` every second (and evaluating `rule_files` every second,
    when given); returns its base URL once it is ready."""

    def __call__(self, targets: Sequence[Target], rule_files: Sequence[Path] = ()) -> Awaitable[str]: ...


class PrometheusServers:
    """Starts Prometheus servers scraping `targets` every second (see StartPrometheus); a test may stop
    one and start it again on the same address and storage, as a restarted pod would be."""

    def __init__(self, tmp_path: Path) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed: run .ci/setup.d/10-prometheus.sh"
        self._binary = binary
        self._tmp_path = tmp_path
        self._args: dict[str, list[str]] = {}
        self._logs: dict[str, Path] = {}
        self._processes: dict[str, asyncio.subprocess.Process] = {}

    async def __call__(self, targets: Sequence[Target], rule_files: Sequence[Path] = ()) -> str:
        config = scrape_config(targets)
        config["global"]["evaluation_interval"] = "1s"
        if rule_files:
            config["rule_files"] = [str(path) for path in rule_files]
        number = len(self._args)
        config_file = self._tmp_path / f"prometheus-{number}.yml"
        config_file.write_text(yaml.safe_dump(config))
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        self._logs[base_url] = self._tmp_path / f"prometheus-{number}.log"
        self._args[base_url] = [
            self._binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={self._tmp_path / f'tsdb-{number}'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        await self.start_again(base_url)
        return base_url

    async def start_again(self, base_url: str) -> None:
        """Start the server at `base_url` (again) and wait until it is ready."""
        log_file = self._logs[base_url]
        with log_file.open("ab") as log:
            process = self._processes[base_url] = await asyncio.create_subprocess_exec(
                *self._args[base_url], stdout=log, stderr=subprocess.STDOUT
            )

        await wait_until_answers(process, f"{base_url}/-/ready", log_file)

    async def stop(self, base_url: str) -> None:
        await stop_process(self._processes.pop(base_url))

    async def stop_all(self) -> None:
        for base_url in list(self._processes):
            await self.stop(base_url)


class VictoriaMetricsServers:
    """Starts a VictoriaMetrics single-node server (Debian `victoria-metrics`) scraping `targets` every
    second and, with `rule_files`, vmalert evaluating them over it and writing the recorded series back
    by remote write (see StartPrometheus); returns VictoriaMetrics' URL, which serves the Prometheus
    query API."""

    def __init__(self, tmp_path: Path) -> None:
        self._binaries = {name: shutil.which(name) for name in ("victoria-metrics", "vmalert")}
        assert all(self._binaries.values()), (
            "victoria-metrics is not installed: run .ci/setup.d/12-victoriametrics.sh"
        )
        self._tmp_path = tmp_path
        self._processes: list[asyncio.subprocess.Process] = []

    async def __call__(self, targets: Sequence[Target], rule_files: Sequence[Path] = ()) -> str:
        number = len(self._processes)
        config_file = self._tmp_path / f"victoria-metrics-{number}.yml"
        config_file.write_text(yaml.safe_dump(scrape_config(targets)))
        base_url = f"http://127.0.0.1:{free_port()}"
        await self._start(
            "victoria-metrics",
            f"-promscrape.config={config_file}",
            f"-storageDataPath={self._tmp_path / f'victoria-metrics-{number}'}",
            f"-httpListenAddr={base_url.removeprefix('http://')}",
            # By default the newest 30 s are hidden from queries (for late samples) and answers are
            # cached: a test reading what was just scraped or recorded needs neither.
            "-search.latencyOffset=0s",
            "-search.disableCache",
        )
        await wait_until_answers(self._processes[-1], f"{base_url}/health", self._log(number))
        if rule_files:
            alert_url = f"http://127.0.0.1:{free_port()}"
            await self._start(
                "vmalert",
                *(f"-rule={path}" for path in rule_files),
                f"-datasource.url={base_url}",
                f"-remoteWrite.url={base_url}",
                "-remoteWrite.flushInterval=1s",
                "-evaluationInterval=1s",
                f"-httpListenAddr={alert_url.removeprefix('http://')}",
            )
            await wait_until_answers(self._processes[-1], f"{alert_url}/health", self._log(number + 1))
        return base_url

    def _log(self, number: int) -> Path:
        return self._tmp_path / f"victoria-metrics-process-{number}.log"

    async def _start(self, name: str, *args: str) -> None:
        with self._log(len(self._processes)).open("ab") as log:
            self._processes.append(
                await asyncio.create_subprocess_exec(
                    str(self._binaries[name]), *args, stdout=log, stderr=subprocess.STDOUT
                )
            )

    async def stop_all(self) -> None:
        for process in reversed(self._processes):
            await stop_process(process)


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


RECORDINGS = Path(__file__).resolve().parents[1] / "fixtures" / "snmp"
SNMPSIM = (
    Path(os.environ.get("WATTSCALE_SNMPSIM_VENV", "/opt/wattscale-snmpsim")) / "bin/snmpsim-command-responder"
)
V3 = {"username": "wattscale", "auth_key": "authkey-1234", "priv_key": "privkey-5678"}


@dataclass
class SnmpSimulator:
    """A real snmpsim agent on loopback serving a copy of the project's recordings
    (tests/fixtures/snmp/*.snmprec); a test may kill it and start it again on the same port."""

    port: int = field(default_factory=free_udp_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wattscale-snmpsim-")))
    process: asyncio.subprocess.Process | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def set_value(self, recording: str, oid: str, value: int) -> None:
        """Rewrite one OID's value in a recording; snmpsim notices the new file and re-indexes it."""
        path = self.data_dir / f"{recording}.snmprec"
        text, count = re.subn(
            rf"^{re.escape(oid)}\|(\d+)\|.*$", rf"{oid}|\g<1>|{value}", path.read_text(), flags=re.M
        )
        assert count == 1, oid
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        # snmpsim re-indexes when the file's mtime moves; two rewrites within a second must differ too.
        previous = path.stat().st_mtime
        os.utime(tmp, (previous + 2, previous + 2))
        tmp.replace(path)

    def _prepare_root(self) -> None:
        """A world-readable copy of the recordings: snmpsim drops to `nobody`, which cannot enter
        pytest's private tmp directories."""
        self.root.chmod(0o755)
        self.data_dir.mkdir(mode=0o755)
        (self.root / "cache").mkdir()
        (self.root / "cache").chmod(0o777)
        for recording in RECORDINGS.glob("*.snmprec"):
            shutil.copy(recording, self.data_dir / recording.name)
            (self.data_dir / recording.name).chmod(0o644)

    async def start(self) -> None:
        """Start snmpsim (again, after `kill`) and wait until it answers."""
        from collectors.snmp_pdu import SnmpPduCollector, SnmpPduSettings
        from collectors.support import TransientCollectorError

        assert SNMPSIM.exists(), "snmpsim is not installed: run .ci/setup.d/20-snmpsim.sh"
        if not self.data_dir.exists():
            self._prepare_root()
        log_file = self.root / "snmpsim.log"
        with log_file.open("ab") as log:
            process = self.process = await asyncio.create_subprocess_exec(
                str(SNMPSIM),
                f"--data-dir={self.data_dir}",
                f"--agent-udpv4-endpoint=127.0.0.1:{self.port}",
                "--process-user=nobody",
                "--process-group=nogroup",
                f"--cache-dir={self.root / 'cache'}",
                f"--v3-user={V3['username']}",
                f"--v3-auth-key={V3['auth_key']}",
                "--v3-auth-proto=SHA",
                f"--v3-priv-key={V3['priv_key']}",
                "--v3-priv-proto=AES",
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.root,
            )
        raw = {"host": "127.0.0.1", "port": self.port, "vendor": "sentry4", "rack": "probe"}
        settings = build_settings(
            SnmpPduSettings,
            "probe",
            {**raw, "community": "sentry4", "retries": 0, "timeout_seconds": 0.5, "interval_seconds": 1.0},
        )
        probe = SnmpPduCollector("probe", settings, registry=CollectorRegistry())

        async def answers() -> bool:
            assert process.returncode is None, log_file.read_text()[-2000:]
            try:
                await probe.collect()
            except TransientCollectorError:
                return False
            return True

        try:
            await wait_for(answers, timeout_seconds=60, what="snmpsim to answer")
        finally:
            await probe.aclose()

    async def kill(self) -> None:
        """SIGKILL, as when the agent's host dies: nothing answers on the port until `start`."""
        assert self.process is not None
        self.process.kill()
        await self.process.wait()
        self.process = None

    async def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            await self.process.wait()
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class NodeAgentProcess:
    url: str
    process: asyncio.subprocess.Process
