"""`wattscale demo` scraped by a real Prometheus that evaluates the shipped alert rules and sends to a real
Alertmanager, which delivers to a webhook receiver run here. Shared by test_alerting and test_dashboard.

The rules are the shipped file with every `for:` shortened to `FOR_IN_TESTS` (the expressions are the
shipped ones), and the demo's estimator window is 5 s, so a surge reaches an alert in seconds.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from integration_peers import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "apiservice" / "monitoring" / "wattscale.rules.yaml"
FOR_IN_TESTS = "2s"
DEMO_WINDOW_SECONDS = 5


@dataclass
class Webhook:
    """Alertmanager's webhook receiver: every delivered alert, with the time it arrived."""

    deliveries: queue.Queue[tuple[float, dict[str, Any]]] = field(default_factory=queue.Queue)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        deliveries = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                arrived = time.monotonic()
                for alert in body["alerts"]:
                    deliveries.put((arrived, alert))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def wait_for(self, matches: Callable[[dict[str, Any]], bool], *, timeout_seconds: float) -> float:
        """Block until an alert that `matches` arrives; return when it arrived (monotonic)."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching alert delivered within {timeout_seconds} s")
            try:
                arrived, alert = self.deliveries.get(timeout=left)
            except queue.Empty:
                continue
            if matches(alert):
                return arrived


@dataclass
class Stack:
    demo_url: str
    prometheus_url: str
    alertmanager_url: str
    webhook: Webhook

    def demo_request(self, method: str, path: str) -> dict[str, Any]:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the demo's self-signed certificate
        request = urllib.request.Request(self.demo_url + path, method=method)
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_until(self, condition: Callable[[], bool], *, timeout_seconds: float, what: str) -> None:
        deadline = time.monotonic() + timeout_seconds
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")
            time.sleep(0.2)  # polling interval of a condition with a deadline


def shortened_rules(target: Path) -> Path:
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR_IN_TESTS
    target.write_text(yaml.safe_dump(document))
    return target


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while not _ready(url):
        assert process.poll() is None, f"{what} exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"{what} not ready after 60 s: {log.read_text()[-2000:]}"
        time.sleep(0.2)


@contextlib.contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out, subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT) as process:
        try:
            yield process
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def _demo(port: int, log: Path) -> Iterator[str]:
    args = [sys.executable, "-m", "adapter.cli", "demo", "--port", str(port)]
    args += ["--window-seconds", str(DEMO_WINDOW_SECONDS)]
    with (
        log.open("wb") as errors,
        subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True) as demo,
    ):
        try:
            assert demo.stdout is not None
            for line in demo.stdout:  # the demo prints this once it is listening
                if line.startswith("Stop with Ctrl-C"):
                    break
            assert demo.poll() is None, f"demo exited: {log.read_text()[-2000:]}"
            yield f"https://127.0.0.1:{port}"
        finally:
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(timeout=30)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()


@contextlib.contextmanager
def monitoring_stack(work: Path) -> Iterator[Stack]:
    prometheus, alertmanager = shutil.which("prometheus"), shutil.which("prometheus-alertmanager")
    assert prometheus, "prometheus is not installed: run .ci/setup.d/10-prometheus.sh"
    assert alertmanager, "prometheus-alertmanager is not installed: run .ci/setup.d/15-monitoring.sh"
    webhook = Webhook()
    webhook.start()
    demo_port, prometheus_port, alertmanager_port = free_port(), free_port(), free_port()
    am_config = {
        "route": {
            "receiver": "test",
            "group_by": ["alertname", "rack"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "test", "webhook_configs": [{"url": webhook.url, "send_resolved": True}]}],
    }
    (work / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
    demo_target = {"targets": [f"127.0.0.1:{demo_port}"]}
    tls = {"insecure_skip_verify": True}  # the demo's self-signed certificate
    prometheus_config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(shortened_rules(work / "rules.yaml"))],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        },
        "scrape_configs": [
            {"job_name": "wattscale", "scheme": "https", "tls_config": tls, "static_configs": [demo_target]},
            {
                "job_name": "wattscale-power",
                "scheme": "https",
                "metrics_path": "/metrics/power",
                "tls_config": tls,
                "static_configs": [demo_target],
            },
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
    try:
        with (
            _demo(demo_port, work / "demo.log") as demo_url,
            _process(
                [
                    alertmanager,
                    f"--config.file={work / 'alertmanager.yml'}",
                    f"--storage.path={work / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                    "--cluster.listen-address=",
                ],
                work / "alertmanager.log",
            ) as am,
            _process(
                [
                    prometheus,
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                work / "prometheus.log",
            ) as prom,
        ):
            alertmanager_url = f"http://127.0.0.1:{alertmanager_port}"
            prometheus_url = f"http://127.0.0.1:{prometheus_port}"
            _wait_ready(am, f"{alertmanager_url}/-/ready", work / "alertmanager.log", "alertmanager")
            _wait_ready(prom, f"{prometheus_url}/-/ready", work / "prometheus.log", "prometheus")
            yield Stack(demo_url, prometheus_url, alertmanager_url, webhook)
    finally:
        webhook.stop()
