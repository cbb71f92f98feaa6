"""The service's HTTP connections: uvicorn's, with a deadline on each request's headers.

uvicorn bounds the idle time between requests (``timeout_keep_alive``) and ``uploads.py``
bounds the time a body takes, but nothing bounds the time a client takes to send a request's
headers: a client that connects and stalls, or stops halfway through its headers, would hold
its connection for ever, and enough of them would use up ``limit_concurrency`` so that every
other client got 503. Here the headers must arrive within ``read_timeout`` seconds of the
connection, or of the first byte of the next request on a kept-alive connection; a client
that misses it gets a 408 JSON error and its connection is closed. Malformed HTTP gets a 400
JSON error (uvicorn's own answer is plain text), and so does a request beyond
``limit_concurrency`` (503, with ``Retry-After``), which this protocol enforces in uvicorn's
place for that reason.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing connections whose headers arrive too late."""

    read_timeout = 30.0  # seconds; ``with_read_timeout`` makes a subclass with another
    retry_after = 1  # seconds a client refused for too many connections should wait
    _head_deadline: asyncio.TimerHandle | None = None

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107
        super().__init__(*args, **kwargs)
        # uvicorn checks limit_concurrency before each request and answers in plain text; the
        # check moves into the application this protocol runs, to answer in JSON.
        self.connection_limit, self.limit_concurrency = self.limit_concurrency, None
        if self.connection_limit is not None:
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

    def _limited(self, app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        """``app`` behind uvicorn's test: connections or requests beyond the limit get 503."""

        async def limited(scope, receive, send) -> None:
            # As uvicorn counts, but from inside the request's own task (hence ``>``).
            limit = self.connection_limit
            if len(self.connections) > limit or len(self.tasks) > limit:
                error = f"the service has too many connections (at most {limit}): try again shortly"
                body = json.dumps({"error": error}).encode()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(self.retry_after).encode()),
                ]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await app(scope, receive, send)

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
        self._head_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        error = f"the request's headers did not arrive within {self.read_timeout:g} s"
        self._answer_and_close(408, "Request Timeout", error)

    def _answer_and_close(self, status: int, reason: str, error: str) -> None:
        # Written by hand: h11 sends no response to a request it has not (validly) received.
        body = json.dumps({"error": error}).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def with_read_timeout(seconds: float) -> type[HeadDeadlineProtocol]:
    """The protocol class to pass to ``uvicorn.run(http=...)`` for a deadline of ``seconds``."""
    return type("HeadDeadlineProtocol", (HeadDeadlineProtocol,), {"read_timeout": seconds})
