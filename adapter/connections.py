"""Connections the way the generic Go apiserver treats them (`k8s.io/apiserver` secure_serving.go).

- A request's headers must arrive within `read_header_timeout_seconds` (Go: 32 s) of the connection
  opening or of the request's first byte; a connection idle between requests is closed after
  `idle_timeout_seconds` (Go: 90 s). Clients that send nothing, or half a request line, cannot hold
  a connection for longer.
- Headers may total `max_header_bytes` (Go's MaxHeaderBytes: 1 MB, the request line included).
- At most `max_connections` connections are open at once: one more is closed at once, so memory
  stays bounded however many slow clients there are.
- What aiohttp refuses itself (a malformed request, an oversized line, too many headers, an `Expect`
  it does not know) is answered with a Kubernetes `Status` like every other error, logged as one line
  (rate-limited), never with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from adapter import wire
from adapter.logs import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    read_header_timeout_seconds: float = 32.0
    idle_timeout_seconds: float = 90.0
    max_header_bytes: int = 1 << 20
    max_headers: int = 8192
    """aiohttp also counts headers; Go only counts bytes. 8,192 one-byte headers fit in 64 kB."""
    max_connections: int = 4096


REFUSED_LOG = web.AppKey("refused_log", RateLimitedLog)
"""One line per refused request, at most a few a second: an unauthenticated client must not flood the
log. One per app, shared by the middlewares and the connections that serve it."""


def status_response(code: int, message: str, reason: str | None = None) -> web.Response:
    text = wire.status_json(code, message, reason)
    return web.Response(text=text, status=code, content_type="application/json")


class HeadersTooLarge(BadHttpMessage):
    message_text = "Request Header Fields Too Large"
    code = 431

    def __init__(self) -> None:
        super().__init__(self.message_text)


def _refusal(exc: BaseException | None, status: int) -> tuple[int, str]:
    """(code, message) for what the parser refused, with Go's codes: headers too large -> 431."""
    if isinstance(exc, (LineTooLong, HeadersTooLarge)) or (
        isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc.message)
    ):
        return 431, "Request Header Fields Too Large"
    if isinstance(exc, HttpProcessingError) and exc.message:
        return exc.code or status, f"malformed HTTP request: {exc.message}"
    return status, "malformed HTTP request"


def _header_bytes(message: object) -> int:
    """The size of a parsed request's line and headers, as Go counts them against MaxHeaderBytes."""
    if not isinstance(message, RawRequestMessage):
        return 0
    line = len(message.method) + len(message.path) + 12
    return line + sum(len(name) + len(value) + 4 for name, value in message.raw_headers)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a read-header deadline, a header byte budget, a connection
    cap and `Status` answers for the errors aiohttp raises before our middlewares run."""

    def __init__(
        self, manager: web.Server, *, limits: ConnectionLimits, refused: RateLimitedLog, **kwargs: Any
    ) -> None:
        super().__init__(
            manager,
            keepalive_timeout=limits.idle_timeout_seconds,
            max_line_size=limits.max_header_bytes,
            max_field_size=limits.max_header_bytes,
            max_headers=limits.max_headers,
            **kwargs,
        )
        self._limits = limits
        self._refused = refused
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._head_request = False
        """Whether the request being read is a HEAD: a refusal before it is parsed must have no body."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        super().connection_made(transport)
        if manager is not None and len(manager.connections) > self._limits.max_connections:
            self._refused.warning(code=0, error="too many connections", limit=self._limits.max_connections)
            self.force_close()
            transport.close()
            return
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        requests = self._request_count
        idle = self._current_request is None and not self._messages
        if data and idle and self._header_bytes == 0:  # the first bytes of a request
            self._head_request = data.startswith(b"HEAD ")
        super().data_received(data)
        if self._request_count != requests:  # whole header blocks arrived
            self._stop_waiting_for_headers()
            self._refuse_parsed_requests_go_would_not_serve()
        elif data and idle:
            if self._header_deadline is None:
                self._await_headers()
            self._header_bytes += len(data)
            if self._header_bytes > self._limits.max_header_bytes:
                self._refuse_oversized_headers()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_waiting_for_headers()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._header_bytes = 0
        self._header_deadline = self._loop.call_later(
            self._limits.read_header_timeout_seconds, self._header_timeout
        )

    def _stop_waiting_for_headers(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        self._header_bytes = 0

    def _refuse_parsed_requests_go_would_not_serve(self) -> None:
        """Headers over the byte budget (aiohttp limits each line, Go the whole block) and any HTTP
        version but 1.x (aiohttp would answer "HTTP/2.0 ..." to a text request line) become errors,
        answered in turn by `handle_error`."""
        for position, (message, payload) in enumerate(self._messages):
            if not isinstance(message, RawRequestMessage):
                continue
            error: BadHttpMessage | None = None
            if _header_bytes(message) > self._limits.max_header_bytes:
                error = HeadersTooLarge()
            elif message.version.major != 1:
                error = BadHttpMessage("unsupported protocol version")
            if error is not None:
                self._messages[position] = (
                    _ErrInfo(status=error.code, exc=error, message=error.message),
                    payload,
                )

    def _header_timeout(self) -> None:
        # Go closes the connection without an answer when the header deadline passes; so do we.
        self._header_deadline = None
        self._refused.info(code=0, error="request headers not received in time", peer=str(self.peername))
        self.force_close()
        if self.transport is not None:
            self.transport.close()

    def _refuse_oversized_headers(self) -> None:
        """Headers still arriving past the budget: answer now, before buffering any more of them."""
        self._stop_waiting_for_headers()
        self._refused.info(code=431, error="request headers over the size limit", peer=str(self.peername))
        if self.transport is not None:
            answer = wire.status_json(431, HeadersTooLarge.message_text)
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(answer)}\r\nConnection: close\r\n\r\n{answer}".encode()
            )
            self.transport.close()
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        if status >= 500:  # reached only through a bug below our middlewares: keep its traceback
            log.error("api.unhandled", exc_info=exc)
            code, text = status, "Internal error occurred: the adapter failed to answer this request"
        else:
            code, text = _refusal(exc, status)
            self._refused.info(code=code, error=text, peer=str(request.remote))
        response = status_response(code, text)
        if self._head_request or request.method == "HEAD":
            response = web.Response(status=code, content_type="application/json")
        response.force_close()
        return response

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        # aiohttp raises some errors (an unknown `Expect`: 417) before any middleware runs.
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            self._refused.info(code=resp.status, error=resp.reason, path=request.path)
            resp = status_response(resp.status, resp.text or resp.reason)
        result: tuple[web.StreamResponse, bool] = await super().finish_response(request, resp, start_time)
        return result


class GuardedServer(web.Server):
    def __init__(self, server: web.Server, limits: ConnectionLimits, refused: RateLimitedLog) -> None:
        super().__init__(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
        self._limits = limits
        self._refused = refused

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(
            self, limits=self._limits, refused=self._refused, loop=self._loop, **self._kwargs
        )


class GuardedAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections follow `ConnectionLimits`."""

    def __init__(self, app: web.Application, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        super().__init__(app, access_log=None, **kwargs)
        self._limits = limits or ConnectionLimits()

    async def _make_server(self) -> web.Server:
        refused = self.app.get(REFUSED_LOG) or RateLimitedLog(log, "api.request_failed")
        return GuardedServer(await super()._make_server(), self._limits, refused)
