"""`wattscale serve` as the user runs it: its own process (`python -m adapter.cli serve`, cwd at the
repository root, so the checkout under test is what runs), no cluster, `--insecure-disable-auth`, a
self-signed certificate, and a config file with short windows so faults show within seconds."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from integration_peers import free_port, stop_process, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
CUSTOM = "/apis/custom.metrics.k8s.io/v1beta2"


@dataclass
class Answer:
    status: int
    body: dict[str, Any]

    @property
    def value(self) -> float:
        """The one item's value as a number (quantities here are plain or milli)."""
        (item,) = self.body["items"]
        quantity = str(item["value"])
        return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@dataclass
class Serve:
    url: str
    log: Path
    process: asyncio.subprocess.Process
    session: aiohttp.ClientSession

    async def get(self, path: str) -> Answer:
        assert self.process.returncode is None, f"serve exited: {self.log.read_text()[-3000:]}"
        async with self.session.get(self.url + path, ssl=False) as response:
            return Answer(response.status, await response.json(content_type=None))

    async def metric(self, path: str) -> Answer:
        return await self.get(CUSTOM + path)

    async def wait_for_status(self, path: str, status: int, *, timeout_seconds: float = 90) -> Answer:
        """Poll `path` until it answers `status`; return that answer."""
        found: list[Answer] = []

        async def answers() -> bool:
            found.append(await self.metric(path))
            return found[-1].status == status

        try:
            await wait_for(answers, timeout_seconds=timeout_seconds, what=f"{path} to answer {status}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last answer {found[-1] if found else None}") from None
        return found[-1]

    async def self_metrics(self) -> str:
        async with self.session.get(self.url + "/metrics", ssl=False) as response:
            assert response.status == 200
            return await response.text()


@contextlib.asynccontextmanager
async def serve(config: Mapping[str, Any], tmp_dir: Path) -> AsyncIterator[Serve]:
    """`serve --config` with `config`, listening on a free port; ready once `/readyz` answers 200."""
    config_file = tmp_dir / f"serve-{time.monotonic_ns()}.yaml"
    config_file.write_text(yaml.safe_dump(dict(config)))
    port = free_port()
    log = tmp_dir / f"serve-{port}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "adapter.cli",
            "serve",
            "--config",
            str(config_file),
            "--insecure-disable-auth",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={tmp_dir / f'certs-{port}'}",
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
    running = Serve(f"https://127.0.0.1:{port}", log, process, session)

    async def ready() -> bool:
        assert process.returncode is None, f"serve exited: {log.read_text()[-3000:]}"
        try:
            async with session.get(running.url + "/readyz", ssl=False) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await wait_for(ready, timeout_seconds=120, what="serve /readyz")
        yield running
    finally:
        await session.close()
        await stop_process(process, timeout_seconds=30.0)
