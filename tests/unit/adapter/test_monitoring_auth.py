"""`serve` keeps the power series and the live page behind authentication and SubjectAccessReview, each
path granted on its own (the fixture of test_auth: real TLS, a fake API server's reviews)."""

from __future__ import annotations

import pytest
from pki import issue
from test_auth import Adapter, adapter, proxy_headers  # noqa: F401 - `adapter` is the fixture


async def test_anonymous_requests_get_401(adapter: Adapter) -> None:  # noqa: F811
    for path in ("/metrics/power", "/ui/", "/ui/data.json", "/ui/static/app.js"):
        assert (await adapter.get(path))[0] == 401, path


@pytest.mark.parametrize("path", ["/metrics/power", "/ui/", "/ui/data.json"])
async def test_each_path_needs_its_own_grant(adapter: Adapter, path: str) -> None:  # noqa: F811
    proxy = issue(adapter.pki.front_proxy_ca, "front-proxy-client")
    adapter.fake.grants["viewer"] = {"/metrics"}  # the self-metrics grant does not reach these paths
    assert (await adapter.get(path, proxy, proxy_headers("viewer")))[0] == 403
    adapter.fake.grants["viewer"] = {"/metrics", path}
    adapter.clock[0] += 11  # past the cached denial
    assert (await adapter.get(path, proxy, proxy_headers("viewer")))[0] == 200
