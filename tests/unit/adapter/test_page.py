"""The live page's routes: its files, and data.json with the store's fresh values and the rack history."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient


async def test_page_and_its_files_are_served(api: TestClient[web.Request, web.Application]) -> None:
    page = await api.get("/ui/")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert 'src="static/app.js"' in html and "http" not in html.split("<body>")[1], "no external resources"
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = await api.get(f"/ui/static/{name}")
        assert response.status == 200 and response.content_type == kind


async def test_unknown_static_file_is_a_status_404(api: TestClient[web.Request, web.Application]) -> None:
    for path in ("/ui/static/secret.py", "/ui/static/..%2F__init__.py"):
        response = await api.get(path)
        assert response.status == 404
        assert (await response.json())["kind"] == "Status"


async def test_data_has_fresh_rack_and_workload_values_only(
    api: TestClient[web.Request, web.Application],
) -> None:
    data = await (await api.get("/ui/data.json")).json()
    assert data["racks"] == [{"rack": "r12", "headroom_watts": 4250.0}]
    assert data["workloads"] == [
        {"namespace": "inference", "kind": "Deployment", "name": "llm", "power_watts": 1500.0},
        {"namespace": "inference", "kind": "InferenceService", "name": "chat", "watts_per_token": 0.75},
    ]
    # r12 has no power or cap in the example store, so its history has no point to draw.
    assert data["history"] == {}
