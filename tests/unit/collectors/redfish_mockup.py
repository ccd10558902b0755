"""A Redfish service serving the DMTF public-pdu mockup the way DMTF's Redfish-Mockup-Server does in
short form (`-S`): `/redfish/v1/<path>` answers `<mockup>/<path>/index.json`. Documents are held in
memory so a test can change readings between polls; sessions and basic auth are checked."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from pathlib import Path
from typing import Any

from aiohttp import web

# Self-contained (no test-helper imports) so tests/integration can load it too.
MOCKUP = Path(__file__).resolve().parents[2] / "fixtures" / "redfish-rackpdu"
USERNAME = "admin"
PASSWORD = "P@ssw0rd"


def load_mockup(root: Path = MOCKUP) -> dict[str, dict[str, Any]]:
    documents = {}
    for index in root.rglob("index.json"):
        relative = index.parent.relative_to(root).as_posix()
        path = "/redfish/v1" + ("" if relative == "." else "/" + relative)
        documents[path] = json.loads(index.read_text())
    return documents


class RedfishMockup:
    def __init__(self, auth: str = "session") -> None:
        self.documents = load_mockup()
        self.auth = auth
        self.tokens: set[str] = set()
        self.logins = 0
        self.deleted_sessions: list[str] = []
        self.delay_seconds = 0.0
        self.broken_paths: set[str] = set()
        self.fault: str | None = None
        """Every GET answers with a fault: "500", "garbage" (200, not JSON) or "truncated" (200, the
        JSON document cut in half)."""

    def document(self, path: str) -> dict[str, Any]:
        return self.documents[path]

    def _authorised(self, request: web.Request) -> bool:
        if self.auth == "none":
            return True
        if self.auth == "basic":
            expected = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
            return request.headers.get("Authorization") == f"Basic {expected}"
        return request.headers.get("X-Auth-Token") in self.tokens

    async def login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("UserName") != USERNAME or body.get("Password") != PASSWORD:
            return web.json_response({"error": {"code": "Base.1.0.GeneralError"}}, status=401)
        self.logins += 1
        token = f"token-{self.logins}"
        self.tokens.add(token)
        location = f"/redfish/v1/SessionService/Sessions/{self.logins}"
        return web.json_response(
            {"Id": str(self.logins)}, status=201, headers={"X-Auth-Token": token, "Location": location}
        )

    async def delete_session(self, request: web.Request) -> web.Response:
        self.deleted_sessions.append(request.match_info["id"])
        self.tokens.discard(request.headers.get("X-Auth-Token", ""))
        return web.Response(status=204)

    async def get(self, request: web.Request) -> web.Response:
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if not self._authorised(request):
            return web.json_response({"error": {"code": "Base.1.0.NoValidSession"}}, status=401)
        path = request.path.rstrip("/")
        if self.fault == "500":
            return web.json_response({"error": {"code": "Base.1.0.InternalError"}}, status=500)
        if self.fault == "garbage":
            return web.Response(body=b"\x00\xffnot json at all", content_type="application/json")
        if self.fault == "truncated" and path in self.documents:
            whole = json.dumps(self.documents[path])
            return web.Response(text=whole[: len(whole) // 2], content_type="application/json")
        if path in self.broken_paths:
            return web.Response(text="<html>500</html>", content_type="text/html")
        if path not in self.documents:
            raise web.HTTPNotFound()
        return web.json_response(copy.deepcopy(self.documents[path]))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/redfish/v1/SessionService/Sessions", self.login)
        app.router.add_delete("/redfish/v1/SessionService/Sessions/{id}", self.delete_session)
        app.router.add_get("/redfish/v1{tail:.*}", self.get)
        return app
