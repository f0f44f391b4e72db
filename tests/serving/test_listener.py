"""`--workers N` on Linux: a listening socket per worker, so that new connections spread over
the workers however they arrive (serving/process/listener.py), and a port already served is refused."""

from __future__ import annotations

import http.client
import pickle
import socket
import time
from pathlib import Path

import pytest
from uvicorn.config import STARTUP_FAILURE

from serving.process import listener
from tests.serving.conftest import Server, free_port, run_cli
from tests.serving.test_shared_metrics import PREDICT, predicted, two_workers

needs_linux = pytest.mark.skipif(
    not listener.SPREADS_CONNECTIONS, reason="SO_REUSEPORT spreads connections on Linux only"
)


def listening_sockets(port: int) -> int:
    """TCP sockets in LISTEN on this port, from the kernel's own table."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        count += int(local.split(":")[1], 16) == port and state == "0A"
    return count


def one_request_on_each_of(server: Server, connections: int) -> None:
    """Opens every connection first (a client's pool at start), then sends one request on each."""
    pool = [
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(connections)
    ]
    try:
        for c in pool:
            c.connect()
        for c in pool:
            c.request("POST", PREDICT, b'{"instances": [70]}', {"Content-Type": "application/json"})
        for c in pool:
            answer = c.getresponse()
            assert answer.status == 200, answer.read()
            answer.read()
    finally:
        for c in pool:
            c.close()


@needs_linux
@pytest.mark.slow
def test_each_worker_listens_on_its_own_socket_and_gets_a_share_of_the_connections(
    tmp_path: Path,
):
    folder = tmp_path / "metrics"
    server = two_workers(folder, "0.1")
    try:
        assert listening_sockets(server.port) == 2
        one_request_on_each_of(server, 32)
        deadline = time.monotonic() + 20
        while True:  # the workers write their counts every 0.1 s
            answered = sorted(predicted(p) for p in folder.glob("counter_*.db"))
            if sum(answered) == 32 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # the kernel hashes each connection to a worker: all 32 on one has odds of 2 in 2**32
        assert len(answered) == 2 and sum(answered) == 32 and min(answered) > 0, answered

        again = run_cli("--repo", "models", "--workers", "2", "--port", str(server.port))
        assert again.returncode == 2, again.stderr  # not a third member of the workers' group
        assert again.stderr.strip().splitlines()[-1] == (
            f"error: cannot listen on 127.0.0.1:{server.port}: Address already in use; stop what "
            "holds it, or pass another --port"
        )
        assert listening_sockets(server.port) == 2
    finally:
        server.stop()


@needs_linux
@pytest.mark.slow
def test_without_reuse_port_the_workers_share_one_socket(tmp_path: Path):
    server = two_workers(tmp_path / "metrics", "1", "--no-reuse-port")
    try:
        assert listening_sockets(server.port) == 1
        one_request_on_each_of(server, 4)
    finally:
        server.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_stops_the_start_with_one_line_before_any_model_loads(workers: str):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("--repo", "models", "--workers", workers, "--port", str(port))
    assert done.returncode == 2
    assert "loaded model" not in done.stderr + done.stdout
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    ), done.stderr
    assert "Traceback" not in done.stderr


@needs_linux
def test_the_parents_socket_holds_the_port_without_listening():
    sock = listener.bind("127.0.0.1", free_port(), reuse_port=True)
    try:
        port = sock.getsockname()[1]
        assert listening_sockets(port) == 0  # no connection can wait on a socket no worker reads
        with socket.socket() as plain, pytest.raises(OSError, match="in use"):  # yet it is bound
            plain.bind(("127.0.0.1", port))
    finally:
        sock.close()


@needs_linux
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_second_server_starting_on_the_port_is_refused_before_any_worker_listens(host: str):
    """A bound, not listening socket does not refuse SO_REUSEADDR (uvicorn's, ours): the lock
    does, for every address on the port, until the first server's socket is closed."""
    first = listener.bind("127.0.0.1", free_port(), reuse_port=True)
    port = first.getsockname()[1]
    try:
        with pytest.raises(OSError, match="in use"):
            listener.bind(host, port, reuse_port=True)
    finally:
        first.close()
    listener.bind(host, port, reuse_port=True).close()  # the lock went with the first


@needs_linux
def test_a_worker_that_cannot_listen_stops_the_start_with_one_line(
    capsys: pytest.CaptureFixture[str],
):
    """Another server took the port before any worker listened (SO_REUSEADDR, as uvicorn's, may
    bind beside the parent's socket): the worker, as it unpickles the socket, exits with
    uvicorn's start-up failure code, so that the supervisor stops rather than restart it."""
    ours = listener.bind("127.0.0.1", free_port(), reuse_port=True)
    port = ours.getsockname()[1]
    try:
        with socket.create_server(("127.0.0.1", port)), pytest.raises(SystemExit) as stop:
            pickle.loads(pickle.dumps(ours))
    finally:
        ours.close()
    assert stop.value.code == STARTUP_FAILURE
    assert capsys.readouterr().err == (
        f"error: a worker could not listen on 127.0.0.1:{port}: [Errno 98] Address already in use\n"
    )
