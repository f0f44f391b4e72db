"""Bounded connections (serving/http/connections.py): a real `python -m serving` with short limits set
by its flags, driven by raw sockets as a hostile client would (issue 26.6 and 26.12)."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import inspect
import json
import pickle
import resource
import select
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.server import Server as UvicornServer
from uvicorn.server import ServerState

from serving.http import connections
from serving.ops.settings import Settings
from tests.serving.conftest import Server, run_cli

TIMEOUT_S = 1.0
"""--header-timeout-s and --body-timeout-s of the test server; the sweep runs every 0.25 s."""
SLACK_S = 1.0
"""A timeout fires up to a sweep (0.25 s) late; the rest is room for a busy test machine."""
CAP = 6
PREDICT = b"POST /v1/models/side_effects:predict HTTP/1.1\r\nHost: t\r\n"
BODY = b'{"instances": [{"age": 70}]}'
LIMITS = (
    "--header-timeout-s",
    str(TIMEOUT_S),
    "--body-timeout-s",
    str(TIMEOUT_S),
    "--keep-alive-timeout-s",
    "2",
    "--max-connections",
    str(CAP),
    "--max-header-bytes",
    "8192",
    "--max-headers",
    "50",
    "--max-body-bytes",
    "100000",
)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server("--repo", "models", "--models", "side_effects", *LIMITS).wait_ready()
    yield s
    log = s.output()
    assert "Traceback" not in log and "WARNING uvicorn" not in log, log  # all client faults


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes, float]:
    """Reads until the server closes: status, headers, body, seconds it took."""
    start, data = time.monotonic(), b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return 0, {}, b"", time.monotonic() - start
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body, time.monotonic() - start


def refused(sock: socket.socket, status: int, words: str) -> float:
    """Asserts the answer is `status` with a JSON error naming `words`, then a close."""
    got, headers, body, took = answer(sock)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert words in json.loads(body)["error"]
    return took


def test_headers_sent_slowly_are_answered_408_within_the_timeout(server: Server):
    sock = connect(server)
    start = time.monotonic()
    for byte in b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n":  # slowloris: a byte at a time
        sock.send(bytes([byte]))
        if select.select([sock], [], [], 0.1)[0]:  # answered
            break
    refused(sock, 408, "header_timeout_s")
    assert time.monotonic() - start < TIMEOUT_S + SLACK_S


def test_a_connection_that_sends_nothing_is_closed(server: Server):
    got, _, _, took = answer(connect(server))
    assert got == 0 and took < TIMEOUT_S + SLACK_S  # closed: there was nothing to answer


def test_a_half_sent_body_is_answered_408(server: Server):
    sock = connect(server)
    sock.sendall(PREDICT + b"Content-Length: 100\r\n\r\n" + BODY[:10])
    assert refused(sock, 408, "body_timeout_s") < TIMEOUT_S + SLACK_S


def test_a_chunked_body_that_never_ends_is_bounded_in_time(server: Server):
    sock = connect(server)
    sock.sendall(PREDICT + b"Transfer-Encoding: chunked\r\n\r\n")
    start = time.monotonic()
    while time.monotonic() - start < TIMEOUT_S + 2:
        sock.sendall(b"1\r\n \r\n")
        if select.select([sock], [], [], 0.05)[0]:  # answered
            break
    refused(sock, 408, "body_timeout_s")
    assert time.monotonic() - start < TIMEOUT_S + SLACK_S


def test_a_chunked_body_beyond_max_body_bytes_is_413(server: Server):
    sock = connect(server)
    sock.sendall(PREDICT + b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"1000\r\n" + b" " * 0x1000 + b"\r\n"
    try:
        for _ in range(40):  # 160 KiB of spaces: more than --max-body-bytes
            sock.sendall(chunk)
    except OSError:
        pass
    got, _, body, _ = answer(sock)  # ours, or the app's own 413 when it counted first; closed
    assert got == 413 and "100000 bytes" in json.loads(body)["error"]


def test_a_chunk_size_beyond_any_body_is_answered(server: Server):
    sock = connect(server)
    sock.sendall(PREDICT + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc")
    assert refused(sock, 408, "body_timeout_s") < TIMEOUT_S + SLACK_S


@pytest.mark.parametrize("size", [b"zz", b"1" * 17 + b"f", b"-1"])
def test_a_malformed_chunk_size_is_400(server: Server, size: bytes):
    sock = connect(server)
    sock.sendall(PREDICT + b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\n")
    refused(sock, 400, "invalid HTTP request: ")


@pytest.mark.parametrize("line", [b"GARBAGE\r\n\r\n", b"GET / HTTP/9\r\n\r\n", b"\x00\x01\r\n\r\n"])
def test_a_malformed_request_is_400_json(server: Server, line: bytes):
    sock = connect(server)
    sock.sendall(line)
    refused(sock, 400, "invalid HTTP request: ")


def test_an_oversized_header_is_431(server: Server):
    sock = connect(server)
    sock.sendall(
        b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    )
    refused(sock, 431, "max_header_bytes")


def test_headers_that_never_end_are_431_before_the_timeout(server: Server):
    sock = connect(server)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
    try:
        for i in range(2000):
            sock.sendall(b"X-%d: 1\r\n" % i)
    except OSError:
        pass
    assert refused(sock, 431, "max_header_bytes") < TIMEOUT_S


def test_too_many_headers_are_431(server: Server):
    sock = connect(server)
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(60))
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n")
    refused(sock, 431, "max_headers")


def test_an_upgrade_request_is_served_as_plain_http(server: Server):
    sock = connect(server)
    upgrade = b"Upgrade: websocket\r\nConnection: Upgrade, close\r\nSec-WebSocket-Version: 13\r\n"
    key = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n" + upgrade + key + b"\r\n")
    got, _, body, _ = answer(sock)
    assert got == 200 and json.loads(body) == {"live": True}


def test_connections_beyond_the_cap_get_503_and_the_rest_are_served(server: Server):
    held = [connect(server) for _ in range(CAP)]
    try:
        time.sleep(0.1)
        extra = connect(server)
        extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        got, headers, body, _ = answer(extra)
        assert got == 503 and headers["retry-after"] == "1"
        assert "max_connections" in json.loads(body)["error"]
        held[0].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert answer(held[0])[0] == 200  # those within the cap still are served
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    later = connect(server)
    later.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert answer(later)[0] == 200


def test_a_keep_alive_client_is_unaffected(server: Server):
    client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        sockets = set()
        for _ in range(4):  # idle 0.6 s between requests: 1.8 s in all, more than the timeouts
            client.request("POST", "/v1/models/side_effects:predict", body=BODY)
            response = client.getresponse()
            assert response.status == 200, response.read()
            assert "predictions" in json.loads(response.read())
            sockets.add(id(client.sock))
            time.sleep(0.6)
        assert len(sockets) == 1  # one connection throughout
    finally:
        client.close()


def test_an_idle_keep_alive_connection_is_closed(server: Server):
    sock = connect(server)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
    got, _, _, took = answer(sock)  # the answer, then the close after --keep-alive-timeout-s 2
    assert got == 200 and 1.5 < took < 3


def test_a_request_still_arriving_when_the_drain_ends_gets_503_json():
    server = Server("--repo", "models", "--models", "side_effects", "--drain-timeout-s", "0.5")
    server.wait_ready()
    sock = connect(server)
    sock.sendall(PREDICT + b"Content-Length: 100\r\n\r\n" + BODY[:10])
    time.sleep(0.2)
    server.process.send_signal(signal.SIGTERM)
    took = refused(sock, 503, "shutting down")
    assert took < 2
    assert server.stop() == -signal.SIGTERM  # uvicorn re-raises the SIGTERM it drained for
    log = server.output()
    assert "Traceback" not in log and "Internal Server Error" not in log, log


def test_idle_sockets_beyond_the_descriptors_get_503_not_resets():
    """The reproduction: 300 idle sockets against a 256-descriptor limit reset new clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # the server inherits it
    try:
        server = Server("--repo", "models", "--models", "side_effects", "--header-timeout-s", "3")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    server.wait_ready()
    idle: list[socket.socket] = []
    try:
        idle += [connect(server) for _ in range(300)]
        time.sleep(0.5)
        answered = [s for s in idle if select.select([s], [], [], 0)[0]]
        assert len(answered) == 300 - 192  # the default cap: 3/4 of 256
        statuses = [answer(sock)[0] for sock in answered]
        assert statuses == [503] * len(answered), statuses  # an answer, never a reset
        late = connect(server)  # a new client while the others hold their connections
        late.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        assert answer(late)[0] == 503
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_every_setting_is_a_flag_with_a_sane_default():
    defaults = Settings()
    assert (defaults.header_timeout_s, defaults.body_timeout_s) == (10, 60)
    assert (defaults.max_header_bytes, defaults.max_headers) == (65536, 100)
    assert defaults.keep_alive_timeout_s == 5 and defaults.max_connections is None
    assert 1 <= connections.default_max_connections() <= connections.DEFAULT_MAX_CONNECTIONS
    shown = run_cli("--help").stdout
    for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s", "max_connections"):
        assert f"--{name.replace('_', '-')}" in shown
    for name in ("max_header_bytes", "max_headers", "max_body_bytes", "drain_timeout_s"):
        assert f"--{name.replace('_', '-')}" in shown


# What serving/http/connections.py replaces or relies on inside uvicorn (read in uvicorn 0.55.0). A
# change fails here, loudly: read the new code against serving/http/connections.py, then update.
RELIED_ON = {
    "HttpToolsProtocol.data_received": "010a7ae59a5d3b1a",  # replaced: ours adds the limits
    "HttpToolsProtocol.on_headers_complete": "1ea8589acfad92d8",
    "HttpToolsProtocol.on_message_complete": "1fbad42dc31fc01f",
    "HttpToolsProtocol.connection_lost": "c91a4c9bf2e29c55",  # ours.detach does its part
    "HttpToolsProtocol.shutdown": "d7351fa33f00d430",
    "HttpToolsProtocol.on_response_complete": "64e254f28e389e76",  # arms the keep-alive timer
    "RequestResponseCycle.receive": "8124ae006be71184",  # disconnected -> http.disconnect
    "Server.shutdown": "5d01b8b1f116a786",  # sleeps 0.1 s, then drains, then cancels
}


async def an_app(scope: Any, receive: Any, send: Any) -> None:
    pass


@pytest.mark.parametrize("name", RELIED_ON)
def test_the_uvicorn_internals_we_rely_on_are_unchanged(name: str):
    owner, attribute = name.split(".")
    where = UvicornServer if owner == "Server" else getattr(httptools_impl, owner)
    source = inspect.getsource(getattr(where, attribute))
    got = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert got == RELIED_ON[name], (
        f"uvicorn {uvicorn.__version__} changed {name}: serving/http/connections.py replaces or "
        f"relies on it; check it against the new code, then set its digest to {got}"
    )


def test_uvicorn_calls_the_http_factory_it_is_given():
    config = uvicorn.Config(an_app, http=connections.protocol(Settings()))
    config.load()
    made = config.http_protocol_class
    assert made.func is connections.BoundedHttpToolsProtocol  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(made)).keywords["limits"] == made.keywords["limits"]  # type: ignore[attr-defined]


def test_worker_processes_apply_the_limits_too():
    server = Server("--repo", "models", "--models", "side_effects", "--workers", "2")
    server.wait_ready()
    try:
        sock = connect(server)
        sock.sendall(b"GARBAGE\r\n\r\n")
        refused(sock, 400, "invalid HTTP request: ")
    finally:
        server.stop()


def test_uvicorns_attributes_still_fit_a_shared_key_instance_dict():
    """Past CPython 3.11's 30 shared keys, every attribute look-up of a request is slower
    (serving/http/connections.py keeps its own attributes in slots for that reason)."""
    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(an_app, http=connections.protocol(Settings()))
        config.load()
        made = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=ServerState(), app_state={}, _loop=loop
        )
        assert len(vars(made)) + 1 <= 30  # + 1: `url`, set per request
    finally:
        loop.close()
