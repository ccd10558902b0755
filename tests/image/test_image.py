"""The Dockerfile builds a working, non-root image: a real podman build that runs the entrypoint inside.

No registry is reachable and no container engine runs here, so (see .ci/setup.d/40-image.sh) the build
uses a local Debian base with python3 instead of python:3.11-slim, podman's vfs storage and chroot
isolation. `podman run` cannot start containers on this machine, so the build file is the Dockerfile
verbatim plus one stage, FROM its `runtime` stage, whose `RUN` steps call the entrypoint as the image's
own user; the test reads what they printed. That stage adds no configuration, so the image it yields
carries the runtime stage's USER, ENTRYPOINT and CMD.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapter import __version__

pytestmark = pytest.mark.image

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/wattscale-debian-python:bookworm-2"  # made by .ci/setup.d/40-image.sh
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT_SECONDS = 1800
BEGIN, END = "=====wattscale-manifests-begin=====", "=====wattscale-manifests-end====="
DEMO_BEGIN, DEMO_END = "=====wattscale-demo-begin=====", "=====wattscale-demo-end====="


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", "--storage-driver", "vfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def build(context: Path, containerfile: Path, tag: str, *build_args: str) -> str:
    # --layers=false: vfs stores every layer as a full copy of the root filesystem, so committing only
    # the final image of each stage saves minutes and gigabytes.
    args = [
        "build",
        "--isolation",
        "chroot",
        "--layers=false",
        "--tag",
        tag,
        "--file",
        str(containerfile),
        *build_args,
    ]
    # Package traffic may pass a TLS-inspecting proxy whose CA only the host trusts (Debian's pip in the
    # base reads the system bundle), so the host's bundle is lent to the build steps, read-only.
    if HOST_CA_BUNDLE.is_file():
        args += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    done = podman(*args, str(context), timeout=BUILD_TIMEOUT_SECONDS)
    assert done.returncode == 0, (
        f"podman build failed ({done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    )
    return done.stdout


# Runs inside the image: start `wattscale demo` on a free loopback port, wait (with a deadline) until it
# answers a node metric, print the body between markers and stop the server.
DEMO_CHECK = f"""
import json, signal, socket, ssl, subprocess, time, urllib.error, urllib.request
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
log = open("/tmp/demo.log", "w+")
server = subprocess.Popen(["wattscale", "demo", "--port", str(port), "--exit-after", "180"], stdout=log, stderr=log)
url = f"https://127.0.0.1:{{port}}/apis/custom.metrics.k8s.io/v1beta2/nodes/h100-a1/rack_power_headroom_watts"
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
deadline, body = time.monotonic() + 120, None
while body is None and time.monotonic() < deadline and server.poll() is None:
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:
            body = answer.read().decode()
    except (OSError, urllib.error.URLError):
        time.sleep(0.5)  # polling the condition above, not a fixed wait
# ^C, as a user stops the demo: it shuts its worker processes down (SIGTERM would orphan them).
server.send_signal(signal.SIGINT)
server.wait(60)
log.seek(0)
print(log.read()[-3000:] if body is None else "")
print("{DEMO_BEGIN}", body, "{DEMO_END}", sep="\\n")
"""

SELF_TEST_STAGE = f"""
FROM runtime
RUN ["sh", "-c", "echo uid=$(id -u)"]
RUN ["wattscale", "--version"]
RUN ["wattscale", "serve", "--help"]
RUN ["sh", "-c", "echo {BEGIN} && wattscale manifests --namespace image-test --image {{IMAGE}} \\
    --external-metrics && echo {END}"]
RUN {json.dumps(["python3", "-c", DEMO_CHECK])}
"""


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    output: str


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    tag = f"localhost/wattscale-test:{uuid.uuid4().hex[:12]}"
    containerfile = tmp_path_factory.mktemp("image") / "Containerfile"
    containerfile.write_text((REPO / "Dockerfile").read_text() + SELF_TEST_STAGE.replace("{IMAGE}", tag))
    try:
        output = build(REPO, containerfile, tag, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}")
        yield BuiltImage(tag=tag, output=output)
    finally:
        podman("rmi", "--force", tag)
        # vfs keeps a full copy of every stage's root filesystem; drop the untagged ones.
        podman("image", "prune", "--force")


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        ["hadolint", "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_is_configured_to_run_wattscale_serve_as_non_root(image: BuiltImage) -> None:
    done = podman("image", "inspect", image.tag)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)[0]["Config"]
    assert config["Entrypoint"] == ["wattscale"]
    assert config["Cmd"] == ["serve"]
    user = config["User"].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"want a numeric non-root USER for runAsNonRoot, got {user!r}"
    assert "6443/tcp" in config.get("ExposedPorts", {})


def test_entrypoint_runs_inside_the_image_as_non_root(image: BuiltImage) -> None:
    lines = image.output.splitlines()
    (uid_line,) = [line for line in lines if line.startswith("uid=")]
    assert uid_line != "uid=0", "the image must not run as root"
    assert f"wattscale {__version__}" in lines
    assert "--tls-cert-file" in image.output  # serve's help: every command module imports inside the image
    rendered = image.output.split(BEGIN + "\n", 1)[1].split(END, 1)[0]
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("APIService", "v1beta2.custom.metrics.k8s.io") in kinds
    assert ("APIService", "v1beta1.external.metrics.k8s.io") in kinds
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["metadata"]["namespace"] == "image-test"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image.tag
    # The manifests are package data and the certificate is generated with cryptography inside the image.
    assert any(o["kind"] == "Secret" for o in objects)


def test_demo_server_inside_the_image_serves_a_node_metric(image: BuiltImage) -> None:
    before, after = image.output.split(DEMO_BEGIN + "\n", 1)
    body = after.split("\n" + DEMO_END, 1)[0]
    assert body != "None", f"the demo server in the image never answered the metric:\n{before[-4000:]}"
    answer = json.loads(body)
    assert answer["kind"] == "MetricValueList"
    assert answer["apiVersion"] == "custom.metrics.k8s.io/v1beta2"
    (item,) = answer["items"]
    assert item["describedObject"]["name"] == "h100-a1"
    assert item["metric"]["name"] == "rack_power_headroom_watts"
