"""The admin API's HTTP client against plain sockets on 127.0.0.1 that answer as a
server would (or as something else would): every failure is one sentence saying why."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tickertape.client.admin import AdminClient, basic, bearer
from tickertape.errors import TickertapeError


@contextmanager
def answering(answer: bytes) -> Iterator[tuple[int, list[bytes]]]:
    """A one-connection server on 127.0.0.1 that reads a request's head, sends
    ``answer`` and closes; its port, and the requests it read."""
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                request += chunk
            requests.append(request)
            connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], requests
    finally:
        thread.join(10)
        listener.close()


def http(status: str, body: object) -> bytes:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
    return head.encode() + f"Content-Length: {len(data)}\r\n\r\n".encode() + data


def test_a_json_answer_is_returned_and_a_post_carries_the_authorization() -> None:
    with answering(http("200 OK", {"ended": "2026120701"})) as (port, requests):
        client = AdminClient(port, authorization=bearer("s3cret"))
        assert client.call("POST", "/roll") == {"ended": "2026120701"}
    (request,) = requests
    assert request.startswith(b"POST /roll HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer s3cret\r\n" in request


def test_a_get_carries_no_authorization() -> None:
    with answering(http("200 OK", {"sessions": []})) as (port, requests):
        AdminClient(port, authorization=basic("alice", "pw")).call("GET", "/sessions")
    assert b"Authorization" not in requests[0]


def test_basic_credentials_are_the_user_and_password_in_base64() -> None:
    assert basic("alice", "pw") == "Basic YWxpY2U6cHc="


def test_a_refusal_says_the_server_refused_with_its_reason() -> None:
    with answering(http("403 Forbidden", {"error": "a token is needed"})) as (port, _):
        with pytest.raises(TickertapeError) as refused:
            AdminClient(port).call("POST", "/roll")
    assert str(refused.value) == "the server refused: a token is needed"


def test_an_error_without_json_names_the_http_status() -> None:
    answer = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
    with answering(answer) as (port, _):
        with pytest.raises(TickertapeError) as failed:
            AdminClient(port).call("GET", "/sessions")
    assert str(failed.value) == "HTTP 500 Internal Server Error"


def test_something_that_is_not_http_is_said_to_be_no_admin_api() -> None:
    with answering(b"\x00\x0bA20260101  1\n") as (port, _):  # SoupBinTCP, say
        with pytest.raises(TickertapeError, match="is not a tickertape admin API"):
            AdminClient(port).call("GET", "/sessions")


def test_nothing_listening_is_said_with_the_option_to_check() -> None:
    with socket.create_server(("127.0.0.1", 0)) as gone:
        port = gone.getsockname()[1]
    with pytest.raises(TickertapeError) as failed:
        AdminClient(port).call("GET", "/sessions")
    assert str(failed.value).startswith(f"cannot reach a tickertape admin API at 127.0.0.1:{port}")
    assert str(failed.value).endswith(f"started with --admin-port {port}?")
