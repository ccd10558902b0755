"""A small live page: each rack's power against its cap over the last minutes, headroom, and joules
per token per workload, read from the server's own metric store (never a source).

`/ui/` serves the HTML, `/ui/static/*` its script and style (package data, no CDN: clusters may be
offline), `/ui/data.json` the numbers. The rack history is recorded here, once per store generation,
by a background task of the app, so a page opened now already shows the last minutes. The routes
sit behind the same authentication and authorization as every non-API path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from adapter.catalogue import DEPLOYMENTS, INFERENCE_SERVICES, KINDS, POWER_BUDGETS
from adapter.store import MetricStore

PAGE_PATH = "/ui/"
HISTORY_SECONDS = 600.0
RECORD_PERIOD_SECONDS = 1.0
_RACK_FIELDS = {
    "rack_power_watts": "power_watts",
    "rack_power_latest_watts": "latest_watts",
    "rack_power_cap_watts": "cap_watts",
    "rack_power_headroom_watts": "headroom_watts",
    "rack_power_overdraw_watts": "overdraw_watts",
}
_WORKLOAD_FIELDS = ("watts_per_token", "generation_tokens_per_second", "power_watts")
_STATIC_TYPES = {"app.js": "text/javascript", "style.css": "text/css"}


def racks_now(store: MetricStore, now: float) -> dict[str, dict[str, Any]]:
    """Rack -> its fresh rack metrics (stale ones left out, as the API leaves them out)."""
    racks: dict[str, dict[str, Any]] = {}
    snapshot = store.snapshot()
    for metric, field in _RACK_FIELDS.items():
        for rack, value in snapshot.group((POWER_BUDGETS, "", metric)).items():
            if store.is_fresh(value, now):
                entry = racks.setdefault(rack, {"rack": rack})
                entry[field] = value.value
                if metric == "rack_power_watts":
                    entry["estimated"] = value.labels.get("estimated") == "true"
                    entry["timestamp_seconds"] = value.timestamp_seconds
    return racks


def workloads_now(store: MetricStore, now: float) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for (resource, namespace, metric), values in store.snapshot().groups():
        if resource not in (DEPLOYMENTS, INFERENCE_SERVICES) or metric not in _WORKLOAD_FIELDS:
            continue
        for name, value in values.items():
            if store.is_fresh(value, now):
                key = (namespace, KINDS[resource][0], name)
                row = rows.setdefault(key, {"namespace": namespace, "kind": key[1], "name": name})
                row[metric] = value.value
    return [rows[key] for key in sorted(rows)]


@dataclass(slots=True)
class RackHistory:
    """(time, rack power, cap) per rack for the last `HISTORY_SECONDS`, one point per store generation."""

    store: MetricStore
    clock: Callable[[], float]
    points: deque[tuple[float, dict[str, tuple[float, float]]]]
    generation: int = -1

    def record(self) -> None:
        if not self.store.ready or self.store.generation == self.generation:
            return
        self.generation = self.store.generation
        now = self.clock()
        racks = racks_now(self.store, now)
        self.points.append(
            (
                now,
                {
                    rack: (entry["power_watts"], entry["cap_watts"])
                    for rack, entry in racks.items()
                    if "power_watts" in entry and "cap_watts" in entry
                },
            )
        )
        while self.points and self.points[0][0] < now - HISTORY_SECONDS:
            self.points.popleft()

    def series(self) -> dict[str, list[list[float]]]:
        by_rack: dict[str, list[list[float]]] = {}
        for at, racks in self.points:
            for rack, (power, cap) in racks.items():
                by_rack.setdefault(rack, []).append([round(at, 3), power, cap])
        return by_rack


HISTORY = web.AppKey("page_history", RackHistory)
PAGE_STORE = web.AppKey("page_store", MetricStore)
PAGE_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("page_clock")


async def _record_forever(history: RackHistory) -> None:
    while True:
        history.record()
        await asyncio.sleep(RECORD_PERIOD_SECONDS)  # a sampling period, not a synchronisation


async def _history_task(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_record_forever(app[HISTORY]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def index_page(request: web.Request) -> web.Response:
    html = resources.files(__package__).joinpath("static/index.html").read_text()
    return web.Response(text=html, content_type="text/html")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC_TYPES:
        raise web.HTTPNotFound()
    text = resources.files(__package__).joinpath(f"static/{name}").read_text()
    return web.Response(text=text, content_type=_STATIC_TYPES[name])


async def page_data(request: web.Request) -> web.Response:
    store, now = request.app[PAGE_STORE], request.app[PAGE_CLOCK]()
    history = request.app[HISTORY]
    history.record()
    body = {
        "now_seconds": now,
        "generation": store.generation,
        "racks": sorted(racks_now(store, now).values(), key=lambda r: str(r["rack"])),
        "workloads": workloads_now(store, now),
        "history": history.series(),
        "history_seconds": HISTORY_SECONDS,
    }
    return web.json_response(body)


def add_page(app: web.Application, store: MetricStore, clock: Callable[[], float]) -> None:
    app[PAGE_STORE] = store
    app[PAGE_CLOCK] = clock
    app[HISTORY] = RackHistory(store, clock, deque())
    app.cleanup_ctx.append(_history_task)
    get = app.router.add_get
    get(PAGE_PATH, index_page, allow_head=False)
    get("/ui/static/{name}", static_file, allow_head=False)
    get("/ui/data.json", page_data, allow_head=False)
