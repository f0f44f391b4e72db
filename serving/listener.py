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
Linux hashes every new connection to one of them: an even spread whatever the timing. The cost:
a connection belongs to its worker before it is accepted, so one waits behind its worker's long
request even when another worker is idle, and connections still queued on a worker's socket
when that worker stops are reset (Linux ≥ 5.14 can hand them over: `net.ipv4.tcp_migrate_req`).
`--no-reuse-port` gives back the shared socket; so does any system other than Linux, whose
SO_REUSEPORT does not spread connections.

How: uvicorn's supervisor (`uvicorn.supervisors.Multiprocess`) pickles the sockets it is given
into each worker it starts, the restarted ones included. The parent's socket here is bound but
never listens, so no connection ever waits on it; it reports a port in use before any worker
starts, and it unpickles, in each worker, as a socket of the worker's own. The parent's socket
has SO_REUSEADDR alone, as uvicorn's, and the workers' have both options, so that another
`python -m serving` on the same port is refused ("Address already in use") once the workers
listen, instead of joining their group and taking a share of the connections. (Any program of
the same user that sets SO_REUSEPORT itself can still join: that is what the option allows.)
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
    if reuse_port and SPREADS_CONNECTIONS:
        return _bound(PerWorkerSocket(family, socket.SOCK_STREAM), (host, port), reuse_port=False)
    sock = _bound(socket.socket(family, socket.SOCK_STREAM), (host, port), reuse_port=False)
    sock.set_inheritable(True)  # as uvicorn's own bind_socket: the workers share this one
    return sock


class PerWorkerSocket(socket.socket):
    """Bound in the parent, never listening; each process it is pickled into binds its own."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_bind_in_worker, (self.family, self.getsockname()))


def _bind_in_worker(family: int, address: tuple[Any, ...]) -> socket.socket:
    """Runs in the worker as its arguments are unpickled, before uvicorn starts serving."""
    try:
        return _bound(socket.socket(family, socket.SOCK_STREAM), address, reuse_port=True)
    except OSError as e:  # the parent holds the port with the same options: only if it changed
        print(f"error: a worker could not listen on {address[:2]}: {e}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)  # uvicorn's supervisor stops instead of restarting it forever


def _bound(sock: socket.socket, address: tuple[Any, ...], reuse_port: bool) -> socket.socket:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock
