"""CPU that `serve` and `wattscale demo` burn with no requests, per process, read from /proc/<pid>/stat.

    python bench/idle_cost.py serve --pods 1000 --poll-interval 15 --seconds 60
    python bench/idle_cost.py demo --seconds 60

`serve` runs without a cluster (`--insecure-disable-auth`) over a simulated fleet file of `--pods`
pods polled every `--poll-interval` seconds. After the first pass and `--warmup` seconds, the CPU time
of the server and every process under it is read at the start and end of `--seconds` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
READY_TIMEOUT_SECONDS = 300.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def name_of(pid: int) -> str:
    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    if "resource_tracker" in command:
        return "resource tracker"
    if "spawn_main" in command:
        return "worker"
    return "server"


def family(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += family(int(child))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fleet_file(directory: Path, pods: int) -> Path:
    nodes = [{"name": f"node-{i}", "rack": f"rack-{i // 16}", "gpus": 8} for i in range(pods // 8 + 1)]
    entries = [
        {"namespace": "llm", "name": f"pod-{i:05d}", "node": f"node-{i // 8}", "gpus": 1, "load": 0.5}
        for i in range(pods)
    ]
    path = directory / "fleet.json"
    path.write_text(json.dumps({"nodes": nodes, "pods": entries}))
    return path


def ready(port: int) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=context, timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def start(args: argparse.Namespace, directory: Path, port: int) -> subprocess.Popen[bytes]:
    cli = [sys.executable, "-m", "adapter.cli"]
    if args.command == "demo":
        command = [*cli, "demo", "--port", str(port)]
    else:
        config = directory / "config.yaml"
        fleet = fleet_file(directory, args.pods)
        config.write_text(
            json.dumps(
                {
                    "collectors": [
                        {
                            "name": "sim",
                            "type": "simulated",
                            "fleet_file": str(fleet),
                            "interval_seconds": args.poll_interval,
                        }
                    ]
                }
            )
        )
        command = [
            *cli,
            "serve",
            "--config",
            str(config),
            "--insecure-disable-auth",
            "--secure-port",
            str(port),
            "--cert-dir",
            str(directory),
            "--log-level",
            "warning",
        ]
    return subprocess.Popen(command, cwd=HERE.parent, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["serve", "demo"])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--poll-interval", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="wattscale-idle-"))
    port = free_port()
    process = start(args, directory, port)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not ready(port):
            if process.poll() is not None or time.monotonic() > deadline:
                print("did not become ready", file=sys.stderr)
                return 1
            time.sleep(0.5)
        time.sleep(args.warmup)
        pids = family(process.pid)
        before = {pid: cpu_seconds(pid) for pid in pids}
        started = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - started
        what = (
            f"{args.command} over {args.pods} pods polled every {args.poll_interval:g} s"
            if args.command == "serve"
            else "demo"
        )
        print(f"{what}; no requests; {elapsed:.0f} s; load average {os.getloadavg()[0]:.2f}")
        total = 0.0
        for pid in pids:
            used = (cpu_seconds(pid) - before[pid]) / elapsed * 1000
            total += used
            print(f"  {name_of(pid):<16} pid {pid:>7}: {used:6.1f} ms CPU per second")
        print(f"  {'all':<16} {'':>11}: {total:6.1f} ms CPU per second")
    finally:
        process.terminate()
        process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
