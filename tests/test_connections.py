"""The service's HTTP protocol on its own: uvicorn in a thread, a one-line app, raw sockets.

What it adds to uvicorn: a 503 JSON error (connection closed) for a request beyond the
connection limit, a 408 for headers that do not arrive in time, a 400 for malformed HTTP.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest
import uvicorn

from shipseg.serve import connections

LIMIT = 4
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def hello(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def start_server(read_timeout: float):
    """Serves ``hello`` on an ephemeral port in a thread; yields the port, then stops it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        config = uvicorn.Config(
            hello,
            lifespan="off",
            log_level="error",
            timeout_keep_alive=60,  # a connection left open outlasts the client's patience
            http=connections.protocol(read_timeout=read_timeout, max_connections=LIMIT),
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield listener.getsockname()[1]
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def port():
    """A server whose idle connections stay (for the limit's tests)."""
    yield from start_server(read_timeout=60.0)


@pytest.fixture(scope="module")
def impatient_port():
    """A server that wants each request's headers within a second."""
    yield from start_server(read_timeout=1.0)


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
def idle_connections(port: int, count: int):
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        time.sleep(0.1)  # each is accepted
        yield
    finally:
        for connection in held:
            connection.close()


def test_a_request_on_the_last_free_connection_is_served(port):
    with idle_connections(port, LIMIT - 1):
        assert answered(port) == "HTTP/1.1 200 OK"


def test_a_request_beyond_the_connection_limit_gets_503_json_and_its_connection_closed(port):
    with idle_connections(port, LIMIT):
        status, body = exchange(port, REQUEST)  # kept alive, unless the server closes it
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert json.loads(body) == {
        "error": f"the service has too many connections (at most {LIMIT}): try again shortly"
    }
    assert answered(port) == "HTTP/1.1 200 OK"  # the idle ones closed: room again


def test_the_refusal_tells_the_client_when_to_retry(port):
    with idle_connections(port, LIMIT):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
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
