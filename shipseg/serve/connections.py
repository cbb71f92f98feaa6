"""The service's HTTP connections: uvicorn's HTTP/1.1 protocol with the service's own limits.

uvicorn bounds the idle time between requests (``timeout_keep_alive``) and ``uploads.py``
bounds the time a body takes, but nothing bounds the time a client takes to send a request's
headers: a client that connects and stalls, or stops halfway through its headers, would hold
its connection for ever, and enough of them would leave no connection for anyone else. Here:

- the headers must arrive within ``read_timeout`` seconds of the connection, or of the first
  byte of the next request on a kept-alive connection (408 and the connection closed);
- a request while more than ``max_connections`` connections are open (or requests in
  progress) gets 503 with ``Retry-After`` and its connection closed, as uvicorn's
  ``limit_concurrency`` does, but in JSON (uvicorn's own answer is plain text);
- malformed HTTP gets 400.

Every answer is the service's ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from shipseg.core.errors import ServiceBusyError

ASGIApp = Callable[..., Awaitable[None]]


def protocol(read_timeout: float, max_connections: int) -> type[ServiceProtocol]:
    """The protocol class to pass to ``uvicorn.run(http=...)`` with these limits."""
    limits = {"read_timeout": read_timeout, "max_connections": max_connections}
    return type("ServiceProtocol", (ServiceProtocol,), limits)


def error_json(message: str) -> bytes:
    """The service's error body."""
    return json.dumps({"error": message}).encode()


class ServiceProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on headers and a connection limit.

    Not used itself: ``protocol(...)`` makes the subclass that holds the limits.
    """

    read_timeout: float  # seconds
    max_connections: int
    _head_deadline: asyncio.TimerHandle | None = None

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 (uvicorn's arguments)
        super().__init__(*args, **kwargs)
        self.app = self._limited(self.app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # noqa: D102
        super().connection_made(transport)
        self._head_deadline = self.loop.call_later(self.read_timeout, self._head_too_late)

    def data_received(self, data: bytes) -> None:  # noqa: D102
        super().data_received(data)
        self._watch_head(started=True)

    def on_response_complete(self) -> None:  # noqa: D102
        super().on_response_complete()
        # A pipelined request may already be half here, waiting in h11's buffer.
        self._watch_head(started=bool(self.conn.trailing_data[0]))

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """Malformed HTTP gets the service's JSON error too, not uvicorn's plain text."""
        self._answer_and_close(400, "Bad Request", f"malformed HTTP request: {msg}")

    def _limited(self, app: ASGIApp) -> ASGIApp:
        """``app`` behind the connection limit (checked, as uvicorn does, once per request)."""

        async def limited(scope: dict, receive: ASGIApp, send: ASGIApp) -> None:
            # This connection and this request's task counted, whenever uvicorn adds them.
            limit = self.max_connections
            connections = len(self.connections | {self})
            requests = len(self.tasks | {asyncio.current_task()})
            if connections <= limit and requests <= limit:
                return await app(scope, receive, send)
            refusal = ServiceBusyError(f"the service has too many connections (at most {limit})")
            self.logger.warning(str(refusal))
            body = error_json(str(refusal))
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(refusal.retry_after).encode()),
                (b"connection", b"close"),  # its slot is freed at once, not after keep-alive
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return limited

    def _watch_head(self, started: bool) -> None:
        """Arms the deadline while a started request's headers are incomplete, else cancels."""
        if self.conn.their_state is not h11.IDLE:  # the headers are in: the body has its own
            self._cancel_head_deadline()
        elif started and self._head_deadline is None and not self.transport.is_closing():
            self._head_deadline = self.loop.call_later(self.read_timeout, self._head_too_late)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_late(self) -> None:
        """The deadline's callback: answers 408 unless the headers came in the meantime."""
        self._head_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        error = f"the request's headers did not arrive within {self.read_timeout:g} s"
        self._answer_and_close(408, "Request Timeout", error)

    def _answer_and_close(self, status: int, reason: str, error: str) -> None:
        """Writes an error to the socket and closes it.

        Written by hand: h11 sends no response to a request it has not (validly) received.
        """
        body = error_json(error)
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()
