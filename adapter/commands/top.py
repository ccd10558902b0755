"""`wattscale top`: `kubectl top` for power, read from the custom metrics API.

Through the kubeconfig (the aggregator, with your credentials) or, with `--server`, straight from an
adapter such as `wattscale demo`. Values missing from the API (stale, or never measured) print as "-".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

HELP = "show power, joules per token and rack headroom of racks, nodes, pods or deployments"

API = "/apis/custom.metrics.k8s.io/v1beta2"
BAR_WIDTH = 20
CLEAR_SCREEN = "\x1b[H\x1b[2J"

Fetch = Callable[[str], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    metric: str
    digits: int


@dataclass(frozen=True, slots=True)
class View:
    name_header: str
    resource: str
    namespaced: bool
    columns: tuple[Column, ...]
    sort_by: str


_WORKLOAD_COLUMNS = (
    Column("POWER(W)", "power_watts", 0),
    Column("GPU(W)", "gpu_power_watts", 0),
    Column("J/TOKEN", "watts_per_token", 3),
    Column("TOKENS/S", "generation_tokens_per_second", 0),
)
VIEWS = {
    "racks": View(
        "RACK",
        "powerbudgets.wattscale.io",
        False,
        (
            Column("POWER(W)", "rack_power_watts", 0),
            Column("CAP(W)", "rack_power_cap_watts", 0),
            Column("HEADROOM(W)", "rack_power_headroom_watts", 0),
            Column("OVERDRAW(W)", "rack_power_overdraw_watts", 0),
        ),
        "rack_power_watts",
    ),
    "nodes": View(
        "NODE",
        "nodes",
        False,
        (Column("POWER(W)", "node_power_watts", 0), Column("GPU(W)", "gpu_power_watts", 0)),
        "node_power_watts",
    ),
    "pods": View("POD", "pods", True, _WORKLOAD_COLUMNS, "power_watts"),
    "deployments": View(
        "DEPLOYMENT",
        "deployments.apps",
        True,
        (*_WORKLOAD_COLUMNS, Column("FIT", "replicas_within_budget", 0)),
        "power_watts",
    ),
    "inferenceservices": View(
        "INFERENCESERVICE",
        "inferenceservices.serving.kserve.io",
        True,
        (*_WORKLOAD_COLUMNS, Column("FIT", "replicas_within_budget", 0)),
        "power_watts",
    ),
}


class TopError(Exception):
    """The API refused or could not be reached: the message says why."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(VIEWS), help="what to list")
    parser.add_argument(
        "-n", "--namespace", default=None, help="namespace (pods, deployments; default: the context's)"
    )
    parser.add_argument("-w", "--watch", action="store_true", help="refresh until Ctrl-C")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    )
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument(
        "--server", default=None, help="read an adapter directly, e.g. https://127.0.0.1:6443 (the demo)"
    )
    parser.add_argument(
        "-k",
        "--insecure-skip-tls-verify",
        action="store_true",
        help="with --server: do not verify the server's certificate (the demo's is self-signed)",
    )


def _number(quantity: str) -> float:
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(quantity))  # type: ignore[no-untyped-call]


def metric_path(view: View, namespace: str, metric: str) -> str:
    scope = f"/namespaces/{quote(namespace)}" if view.namespaced else ""
    return f"{API}{scope}/{view.resource}/%2A/{metric}"


async def _items(fetch: Fetch, path: str) -> Mapping[str, Any]:
    try:
        return await fetch(path)
    except TopError as exc:
        if exc.status == 404:  # no object has this metric (yet): an empty column, not an error
            return {}
        raise


async def read_view(fetch: Fetch, view: View, namespace: str) -> dict[str, dict[str, float]]:
    """Object name -> metric -> value, one list request per column (concurrently)."""
    answers = await asyncio.gather(
        *(_items(fetch, metric_path(view, namespace, c.metric)) for c in view.columns)
    )
    table: dict[str, dict[str, float]] = {}
    for column, answer in zip(view.columns, answers, strict=True):
        for item in answer.get("items", []):
            name = item["describedObject"]["name"]
            table.setdefault(name, {})[column.metric] = _number(item["value"])
    return table


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def headroom_bar(power: float | None, cap: float | None) -> str:
    """Share of the cap in use: `[##########----------]  52%`; past the cap the bar is full and says so."""
    if power is None or not cap:
        return "-"
    share = power / cap
    filled = min(BAR_WIDTH, math.ceil(share * BAR_WIDTH))
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {share:4.0%}" + (" OVER CAP" if share > 1 else "")


def render_table(view: View, rows: Mapping[str, Mapping[str, float]]) -> str:
    headers = [view.name_header, *(c.header for c in view.columns)]
    if view.resource == VIEWS["racks"].resource:
        headers.append("CAP USED")
    ordered = sorted(rows.items(), key=lambda item: (-item[1].get(view.sort_by, -math.inf), item[0]))
    lines = []
    for name, values in ordered:
        cells = [name, *(_cell(values.get(c.metric), c.digits) for c in view.columns)]
        if view.resource == VIEWS["racks"].resource:
            cells.append(headroom_bar(values.get("rack_power_watts"), values.get("rack_power_cap_watts")))
        lines.append(cells)
    widths = [max(len(row[i]) for row in [headers, *lines]) for i in range(len(headers))]
    numeric = range(1, 1 + len(view.columns))

    def line(cells: Sequence[str]) -> str:
        return "   ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ).rstrip()

    if not lines:
        return "No values (none measured yet, or all stale)."
    return "\n".join([line(headers), *(line(cells) for cells in lines)])


def _status_message(body: str | bytes | None, fallback: str) -> str:
    try:
        document = json.loads(body or b"")
    except ValueError:
        return fallback
    return str(document.get("message", fallback)) if isinstance(document, dict) else fallback


@contextlib.asynccontextmanager
async def direct_fetch(server: str, *, verify: bool) -> Any:
    import aiohttp

    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    async with aiohttp.ClientSession(base_url=server.rstrip("/") + "/") as session:

        async def fetch(path: str) -> Mapping[str, Any]:
            try:
                async with session.get(path.lstrip("/"), ssl=context) as response:
                    text = await response.text()
                    if response.status != 200:
                        message = _status_message(text, text[:200])
                        raise TopError(f"{response.status}: {message}", response.status)
                    document: Mapping[str, Any] = json.loads(text)
                    return document
            except aiohttp.ClientError as exc:
                raise TopError(f"cannot reach {server}: {exc}") from exc

        yield fetch


@contextlib.asynccontextmanager
async def kubeconfig_fetch(kubeconfig: str | None, context: str | None) -> Any:
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    try:
        await config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    except (config.ConfigException, OSError) as exc:
        raise TopError(f"kubeconfig: {exc}") from exc
    async with client.ApiClient(configuration) as api:

        async def fetch(path: str) -> Mapping[str, Any]:
            try:
                response = await api.call_api(
                    path,
                    "GET",
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _return_http_data_only=True,
                )
                document: Mapping[str, Any] = json.loads(await response.read())
                return document
            except client.ApiException as exc:
                message = _status_message(exc.body, str(exc.reason))
                raise TopError(f"{exc.status}: {message}", exc.status) from exc

        yield fetch


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError):
        return "default"
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    return str(chosen.get("context", {}).get("namespace") or "default")


async def _top(args: argparse.Namespace) -> int:
    view = VIEWS[args.kind]
    namespace = args.namespace
    if namespace is None:
        namespace = "default" if args.server else _context_namespace(args.kubeconfig, args.context)
    source = (
        direct_fetch(args.server, verify=not args.insecure_skip_tls_verify)
        if args.server
        else kubeconfig_fetch(args.kubeconfig, args.context)
    )
    async with source as fetch:
        while True:
            table = render_table(view, await read_view(fetch, view, namespace))
            if not args.watch:
                print(table)
                return 0
            print(CLEAR_SCREEN + table, flush=True)
            await asyncio.sleep(args.interval)  # the refresh period the user asked for


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_top(args))
    except TopError as exc:
        print(f"wattscale top: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
