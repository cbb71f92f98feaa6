"""The service's HTTP protocol on its own: uvicorn in a thread, a one-line app, raw sockets.

What it adds to uvicorn: a 503 JSON error (connection closed) for a request beyond the
connection limit, a 408 for headers that do not arrive in time, a 400 for malformed HTTP, and
an answer given before the whole body that the client reads rather than a reset connection.
"""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.error
import urllib.request

import pytest

from conftest import ThreadServer
from shipseg.serve import connections

LIMIT = 4
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
DRAIN_LIMIT = 8 * 2**20
REFUSAL = b'{"error": "too large"}'


async def hello(scope, receive, send) -> None:
    """Says hello; on ``/refuse``, answers 413 at once without reading the body."""
    status, body = (413, REFUSAL) if scope["path"] == "/refuse" else (200, b"hello")
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def start_server(read_timeout: float):
    """Serves ``hello`` on an ephemeral port in a thread; yields the server, then stops it."""
    protocol = connections.protocol(read_timeout, max_connections=LIMIT, drain_limit=DRAIN_LIMIT)
    with ThreadServer(hello, protocol).running() as server:
        yield server


@pytest.fixture(scope="module")
def server():
    """A server whose idle connections stay (for the limit's tests)."""
    yield from start_server(read_timeout=60.0)


@pytest.fixture()
def port(server):
    return server.port


@pytest.fixture(scope="module")
def impatient_server():
    """A server that wants each request's headers within a second."""
    yield from start_server(read_timeout=1.0)


@pytest.fixture()
def impatient_port(impatient_server):
    return impatient_server.port


def exchange(port: int, sent: bytes) -> tuple[str, bytes]:
    """Sends ``sent`` and reads until the server closes: ``(status line, body)``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(sent)
        answer = b""
        while chunk := client.recv(4096):  # a timeout here: the server kept the connection
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.decode().splitlines()[0], body


def answered(port: int) -> str:
    """The status line of one request that asks the server to close afterwards."""
    return exchange(port, REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))[0]


@contextlib.contextmanager
def idle_connections(server: ThreadServer, count: int):
    """``count`` connections that send nothing, each accepted by the server before the block."""
    server.wait_for_connections(0)  # the previous test's have closed
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(count)]
    try:
        server.wait_for_connections(count)
        yield
    finally:
        for connection in held:
            connection.close()


def test_a_request_on_the_last_free_connection_is_served(server):
    with idle_connections(server, LIMIT - 1):
        assert answered(server.port) == "HTTP/1.1 200 OK"


def test_a_request_beyond_the_connection_limit_gets_503_json_and_its_connection_closed(server):
    with idle_connections(server, LIMIT):
        status, body = exchange(server.port, REQUEST)  # kept alive, unless the server closes it
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert json.loads(body) == {
        "error": f"the service has too many connections (at most {LIMIT}): try again shortly"
    }
    assert answered(server.port) == "HTTP/1.1 200 OK"  # the idle ones closed: room again


def test_the_refusal_tells_the_client_when_to_retry(server):
    with idle_connections(server, LIMIT):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(REQUEST)
            head = client.recv(4096).partition(b"\r\n\r\n")[0].decode().lower()
    assert "retry-after: 1" in head.splitlines() and "connection: close" in head.splitlines()


@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half"])
def test_headers_that_do_not_arrive_in_time_get_408_json_and_the_connection_closed(
    impatient_port, sent
):
    status, body = exchange(impatient_port, sent)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert json.loads(body) == {"error": "the request's headers did not arrive within 1 s"}


def test_malformed_http_gets_400_json(port):
    status, body = exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert status == "HTTP/1.1 400 Bad Request"
    assert json.loads(body)["error"].startswith("malformed HTTP request")


def post_everything_then_read(port: int, size: int) -> tuple[int, bytes]:
    """urllib's POST: the whole body sent before the answer is read. ``(status, body)``."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/refuse", data=b"\xff" * size, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_client_sending_its_whole_body_before_reading_gets_the_early_answer_not_a_reset(port):
    assert post_everything_then_read(port, 4 * 2**20) == (413, REFUSAL)
    assert answered(port) == "HTTP/1.1 200 OK"


def test_an_early_answer_closes_the_connection_and_drains_at_most_the_drain_limit(port):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        head = f"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: {4 * DRAIN_LIMIT}\r\n\r\n"
        client.sendall(head.encode())
        with pytest.raises(OSError):  # reset (or broken pipe) once past the limit
            for _ in range(4 * DRAIN_LIMIT // 2**16):
                client.sendall(b"\xff" * 2**16)
    assert answered(port) == "HTTP/1.1 200 OK"


def test_an_early_answer_stops_draining_a_stalled_body_after_the_read_timeout(impatient_port):
    with socket.create_connection(("127.0.0.1", impatient_port), timeout=30) as client:
        client.sendall(b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nab")
        answer = b""
        while chunk := client.recv(4096):  # the server closes 1 s after the answer
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head.lower()
    assert body == REFUSAL
