"""`wattscale agent`: the per-node GPU agent (a DaemonSet): NVML readings, GPU -> pod mapping from the
kubelet, Prometheus export, and the power-limit endpoint the capper calls. See `collectors.agent_server`."""

from __future__ import annotations

import argparse
import sys

from collectors.durations import duration_seconds

HELP = "run the node agent: serve this node's GPU power, energy, limits and pods over HTTP"


def configure(parser: argparse.ArgumentParser) -> None:
    from collectors.nvml import default_node_name
    from collectors.pod_resources import DEFAULT_SOCKET

    parser.add_argument(
        "--node-name",
        default=default_node_name(),
        help="the node label on every reading (default $NODE_NAME, else the host name)",
    )
    parser.add_argument("--bind-address", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=9477, help="HTTP port (default 9477)")
    parser.add_argument(
        "--interval-seconds", type=duration_seconds, default=5.0, help="NVML read interval (default 5)"
    )
    parser.add_argument(
        "--pod-resources-socket",
        default=DEFAULT_SOCKET,
        help="kubelet pod-resources socket for GPU -> pod mapping; '' to disable",
    )
    parser.add_argument(
        "--control-token-file",
        default=None,
        help="file holding the bearer token power-limit requests must carry (without it they are refused)",
    )
    parser.add_argument(
        "--allow-power-limit-changes",
        action="store_true",
        help="apply power-limit requests (default: answer what would be applied, change nothing)",
    )
    parser.add_argument("--log-level", default="info")


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from adapter import logs
    from collectors.agent_server import AgentSettings, create_agent_app
    from collectors.nvml import NvmlReader

    logs.configure(args.log_level)
    settings = AgentSettings(
        node=args.node_name,
        interval_seconds=args.interval_seconds,
        pod_resources_socket=args.pod_resources_socket or None,
        control_token_file=args.control_token_file,
        allow_power_limit_changes=args.allow_power_limit_changes,
    )
    problems = settings.problems()
    if problems:
        print(f"wattscale agent: {len(problems)} problem(s): " + "; ".join(problems), file=sys.stderr)
        return 2
    app = create_agent_app(settings, NvmlReader())
    web.run_app(app, host=args.bind_address, port=args.port, access_log=None, print=None)
    return 0
