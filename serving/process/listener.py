"""The listening socket of `python -m serving --workers N`: one per worker, where Linux can spread
connections over them.

Why: uvicorn's multi-process mode binds one socket in the parent and every worker accepts from
it. The worker whose event loop wakes first accepts every connection waiting, so a burst of new
connections (a client's pool, a proxy's keep-alive connections) can land on one worker and stay
there for their whole life. Measured with `--workers 2` and wrk's 64 keep-alive connections
(batched wide model, 2-CPU VM, 2026-11-24): one worker held all 64 in 3 runs of 10 (~9,500–10,400
req/s), and the split was as uneven as 5 against 59 in others (13,300–14,600 req/s). That was the
"bimodal" two-process rounds of bench/RESULTS.md.

With SO_REUSEPORT each worker listens on a socket of its own, bound to the same address, and
Linux hashes each new connection's addresses to pick one of them: an even spread on average,
whatever the timing (not by load: a proxy's four connections all land on one of two workers one
time in eight). The cost: a connection belongs to its worker before it is accepted, so one
waits behind its worker's long request even when another worker is idle; connections still
queued on a worker's socket when that worker stops (a restart, SIGHUP, SIGTTOU) are reset
(Linux ≥ 5.14 hands them to another worker with `sysctl net.ipv4.tcp_migrate_req=1`); and
while no worker is up, connections are refused rather than queued. `--no-reuse-port` gives
back the shared socket; so does any system other than Linux, whose SO_REUSEPORT does not
spread connections.

How: uvicorn's supervisor (`uvicorn.supervisors.Multiprocess`) pickles the sockets it is given
into each worker it starts, the restarted ones included. The parent's socket here is bound but
never listens, so no connection ever waits on it; it reports a port in use before any worker
starts, and it unpickles, in each worker, as a socket of the worker's own. The parent's socket
has SO_REUSEADDR alone, as uvicorn's, and the workers' have both options, so that a server
that does not set SO_REUSEPORT (uvicorn, another `python -m serving`) is refused once the
workers listen, instead of joining their group and taking a share of the connections. Before
they listen (a second or so of start-up), the parent's socket alone would not refuse a second
`python -m serving` started at the same moment, whose workers would then join ours: the parent
also holds a lock named after the port (an abstract Unix socket of its network namespace, gone
with the process), so that one is refused at once. (Any program of the same user that sets
SO_REUSEPORT itself can still join: that is what the option allows.)
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from uvicorn.config import STARTUP_FAILURE

SPREADS_CONNECTIONS = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")
"""Where SO_REUSEPORT balances connections between sockets (elsewhere it does not)."""


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    """The socket to hand the workers; raises OSError (a port in use, an unknown address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not (reuse_port and SPREADS_CONNECTIONS):
        sock = _bound(socket.socket(family, socket.SOCK_STREAM), (host, port))
        sock.set_inheritable(True)  # as uvicorn's own bind_socket: the workers share this one
        return sock
    ours = PerWorkerSocket(family, socket.SOCK_STREAM)
    _bound(ours, (host, port))
    try:  # by port alone: two of our servers on one port and two addresses would overlap too
        ours.lock = _bound(socket.socket(socket.AF_UNIX), f"\0onnx-bundle-serving port {port}")
    except BaseException:
        ours.close()
        raise
    return ours


def address(host: str, port: int) -> str:
    """`host:port`, or `[host]:port` for IPv6, for messages."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PerWorkerSocket(socket.socket):
    """Bound in the parent, never listening; each process it is pickled into binds its own."""

    lock: socket.socket | None = None
    """Held while this socket is open: see the module's docstring."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_bind_in_worker, (self.family, self.getsockname()))

    def close(self) -> None:
        if self.lock is not None:
            self.lock.close()
        super().close()


def _bind_in_worker(family: int, sockname: tuple[Any, ...]) -> socket.socket:
    """Runs in the worker as its arguments are unpickled, before uvicorn starts serving."""
    try:
        return _bound(socket.socket(family, socket.SOCK_STREAM), sockname, reuse_port=True)
    except OSError as e:  # another server took the port while no worker of ours listened
        print(f"error: a worker could not listen on {address(*sockname[:2])}: {e}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)  # uvicorn's supervisor stops instead of restarting it forever


def _bound(sock: socket.socket, where: Any, reuse_port: bool = False) -> socket.socket:
    try:
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(where)
    except BaseException:
        sock.close()
        raise
    return sock
