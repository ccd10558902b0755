"""Fixtures that start the real peers (see integration_peers)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import aiohttp
import pytest
import yaml
from integration_peers import ReplayExporter, StartPrometheus, Target, free_port, wait_for
from monitoring_stack import Stack, monitoring_stack


@pytest.fixture
async def replay_exporter() -> AsyncIterator[Callable[[Callable[[float], str]], Awaitable[ReplayExporter]]]:
    started: list[ReplayExporter] = []

    async def start(render: Callable[[float], str]) -> ReplayExporter:
        exporter = ReplayExporter(render)
        await exporter.start()
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        await exporter.stop()


@pytest.fixture
async def start_prometheus(tmp_path: Path) -> AsyncIterator[StartPrometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run .ci/setup.d/10-prometheus.sh"
    processes: list[asyncio.subprocess.Process] = []
    logs: list[Path] = []

    async def start(targets: Sequence[Target], rule_files: Sequence[Path] = ()) -> str:
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
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs,
        }
        if rule_files:
            config["rule_files"] = [str(path) for path in rule_files]
        config_file = tmp_path / f"prometheus-{len(processes)}.yml"
        config_file.write_text(yaml.safe_dump(config))
        port = free_port()
        log_file = tmp_path / f"prometheus-{len(processes)}.log"
        logs.append(log_file)
        with log_file.open("wb") as log:
            processes.append(
                await asyncio.create_subprocess_exec(
                    binary,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={tmp_path / f'tsdb-{len(processes)}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        base_url = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            assert processes[-1].returncode is None, f"prometheus exited: {log_file.read_text()[-2000:]}"
            try:
                async with aiohttp.ClientSession() as session, session.get(f"{base_url}/-/ready") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, timeout_seconds=60, what="prometheus /-/ready")
        return base_url

    yield start
    for process in processes:
        process.terminate()
        try:
            async with asyncio.timeout(20):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture(scope="session")
def monitoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`wattscale demo`, Prometheus with the shipped rules, Alertmanager and a webhook receiver, shared
    by the alerting and dashboard tests (see monitoring_stack)."""
    with monitoring_stack(tmp_path_factory.mktemp("monitoring")) as stack:
        yield stack
