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
- malformed HTTP gets 400;
- an answer given while the request's body is still arriving (a 413 for a body over
  ``--max-upload``, refused from its Content-Length) closes the connection, but not at once:
  closing a socket with unread bytes makes the kernel reset the connection, and a client that
  sends its whole body before reading (Python's urllib and requests do) would read "connection
  reset" instead of the answer. So the rest of the body is read and dropped, up to
  ``drain_limit`` bytes and ``read_timeout`` seconds, and then the connection closed.

Every answer is the service's ``{"error": "..."}``. Each request's ``scope["state"]`` holds
``connections_open`` (the connections open, its own included), which ``GET /health`` reports.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from shipseg.core.errors import ServiceBusyError

CLOSE = (b"connection", b"close")

ASGIApp = Callable[..., Awaitable[None]]
# Most bytes of an unanswered body read (and dropped) after the answer, before closing.
DRAIN_LIMIT = 128 * 2**20


def protocol(
    read_timeout: float, max_connections: int, drain_limit: int = DRAIN_LIMIT
) -> type[ServiceProtocol]:
    """The protocol class to pass to ``uvicorn.run(http=...)`` with these limits.

    Args:
        read_timeout: Seconds a request's headers may take to arrive; also the longest an
            unread body is drained after the answer.
        max_connections: Connections (and requests) served at once; more get 503.
        drain_limit: Most bytes of an unread body drained after the answer (a few times
            ``--max-upload``).
    """
    limits = {
        "read_timeout": read_timeout,
        "max_connections": max_connections,
        "drain_limit": drain_limit,
    }
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
    drain_limit: int  # bytes
    _head_deadline: asyncio.TimerHandle | None = None
    _socket: asyncio.Transport  # the real transport (uvicorn holds a ``_ClosingTransport``)
    _drain_left: int | None = None  # bytes still dropped before closing; None: not closing
    _drain_deadline: asyncio.TimerHandle | None = None

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 (uvicorn's arguments)
        super().__init__(*args, **kwargs)
        self.app = self._limited(self.app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # noqa: D102
        self._socket = transport
        super().connection_made(_ClosingTransport(transport, self))
        self._head_deadline = self.loop.call_later(self.read_timeout, self._head_too_late)

    def data_received(self, data: bytes) -> None:  # noqa: D102
        if self._drain_left is not None:  # closing: the unanswered body is dropped
            self._drain_left -= len(data)
            if self._drain_left < 0:
                self._socket.close()
            return
        super().data_received(data)
        self._watch_head(started=True)

    def on_response_complete(self) -> None:  # noqa: D102
        super().on_response_complete()
        # A pipelined request may already be half here, waiting in h11's buffer.
        self._watch_head(started=bool(self.conn.trailing_data[0]))

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self._cancel_head_deadline()
        if self._drain_deadline is not None:
            self._drain_deadline.cancel()
        super().connection_lost(exc)

    @property
    def draining(self) -> bool:
        """Whether the connection is closing, dropping the rest of an unanswered body."""
        return self._drain_left is not None

    def close(self) -> None:
        """Closes the connection; while a request's body is still arriving, after the rest.

        The answer is sent and the writing side shut at once; the body's remaining bytes are
        read and dropped (at most ``drain_limit`` bytes, ``read_timeout`` seconds), so that the
        client reads the answer rather than a reset.
        """
        if self._socket.is_closing() or self.draining:
            return
        if self.conn.their_state is not h11.SEND_BODY:
            self._socket.close()
            return
        self._drain_left = self.drain_limit
        if self._socket.can_write_eof():
            self._socket.write_eof()
        self._socket.resume_reading()  # paused while the request's task did not read
        self._drain_deadline = self.loop.call_later(self.read_timeout, self._socket.close)

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
                scope.setdefault("state", {})["connections_open"] = connections
                return await app(scope, receive, self._closing_early(send))
            refusal = ServiceBusyError(f"the service has too many connections (at most {limit})")
            self.logger.warning(str(refusal))
            body = error_json(str(refusal))
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(refusal.retry_after).encode()),
                CLOSE,  # its slot is freed at once, not after keep-alive
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return limited

    def _closing_early(self, send: ASGIApp) -> ASGIApp:
        """``send`` that says ``Connection: close`` on an answer given before the whole body.

        h11 cannot read the next request before this one's body ends: the connection closes
        (``close``) rather than read an unbounded body to keep it.
        """

        async def closing(message: dict) -> None:
            if message["type"] == "http.response.start" and self.conn.their_state is h11.SEND_BODY:
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        return closing

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


class _ClosingTransport:
    """A connection's transport as uvicorn sees it: ``close`` is the protocol's ``close``.

    uvicorn closes the transport itself once it has answered a request that asked to close;
    here that waits for the rest of the body (``ServiceProtocol.close``). Everything else is
    the real transport's.
    """

    def __init__(self, transport: asyncio.Transport, owner: ServiceProtocol):
        self._transport, self._owner = transport, owner

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._owner.draining or self._transport.is_closing()

    def close(self) -> None:
        self._owner.close()
