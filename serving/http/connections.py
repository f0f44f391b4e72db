"""Bounded connections: uvicorn's httptools protocol with limits on time, size and count.

Why: uvicorn (0.55, httptools) bounds none of these. A connection that sends nothing, or its
headers a byte at a time, or a body that never ends (a chunk size of `ffffffffffffffff`, or
chunks forever), stays open for as long as the client likes: 300 such sockets used up a
256-descriptor limit and new clients were reset. A 32 MB header and 200,000 headers were
answered 200. And uvicorn answers what it refuses itself in plain text.

What this adds, per connection (the settings are `serving.ops.settings.Settings`'):
- `header_timeout_s`: a request's headers must be complete this long after the connection
  opened, or after the first byte that follows the previous answer (the idle time between
  requests is uvicorn's `timeout_keep_alive`). Past it: 408 when part of a request came, a
  plain close when nothing did.
- `body_timeout_s`: the body must be complete this long after its headers: 408, then close.
- `max_header_bytes`, `max_headers`: 431 and close. `max_body_bytes` also bounds the bytes read
  for one request here, whether or not the app reads them (a body sent after its answer, a
  chunked body that never ends): 413, or a close where the answer has gone already.
- `max_connections` per process: a connection beyond it is answered 503 with Retry-After and
  closed at once, so that descriptors do not run out.
- What the HTTP parser refuses (a malformed request line, a bad chunk size) is 400 JSON.
- At the drain timeout (`drain_timeout_s`, on SIGTERM), a request not yet answered gets 503
  JSON a moment before uvicorn cancels it (instead of its plain-text 500).
Every refusal is `{"error": "..."}` with `Connection: close`; the socket then reads and drops
what the client still sends for up to `LINGER_S` before it closes, because closing a socket
with unread bytes sends a reset that can destroy the answer on its way (at most an eighth of
`max_connections` linger at once; beyond, the socket closes right after the answer, so that a
flood of refused connections cannot take the descriptors the cap keeps free).

How, at no cost per request beyond a few attribute updates: no timer per request; one sweep
per process every `tick_s` looks at each connection's phase (head, body, or answering) and
closes those that stayed in one phase too long, so a timeout fires up to `tick_s` late.

This relies on uvicorn's internals (HttpToolsProtocol's attributes and parser callbacks,
Config.http taking a callable, Server.shutdown's 0.1 s pause before its drain timeout starts):
tests/serving/test_connections.py checks them, and fails on a uvicorn that changed them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import resource
import time
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.ops.settings import Settings

log = logging.getLogger("serving")

LINGER_S = 2.0
"""After a refusal, how long the bytes a client still sends are read and dropped."""
RETRY_AFTER_S = 1
LOG_EVERY_S = 10.0
"""Connections refused for the cap are logged at most this often (a flood must not flood
the log too)."""
DEFAULT_MAX_CONNECTIONS = 4096


def default_max_connections() -> int:
    """Three quarters of this process's open-file limit (the rest for models, logs, gRPC), at
    most `DEFAULT_MAX_CONNECTIONS`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft * 3 // 4))


@dataclass
class ConnectionLimits:
    """The limits, and the state the connections of one process share."""

    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    max_headers: int
    max_body_bytes: int
    max_connections: int
    drain_timeout_s: float
    watching: set[Any] | None = field(default=None, init=False, repr=False)
    lingering: int = field(default=0, init=False, repr=False)
    refused: int = field(default=0, init=False, repr=False)
    refused_logged_at: float = field(default=-LOG_EVERY_S, init=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            max_body_bytes=settings.max_body_bytes,
            max_connections=settings.max_connections or default_max_connections(),
            drain_timeout_s=settings.drain_timeout_s,
        )

    @property
    def tick_s(self) -> float:
        """How often the sweep looks: a quarter of the shorter timeout, within [0.05, 1] s."""
        return min(1.0, max(0.05, min(self.header_timeout_s, self.body_timeout_s) / 4))

    def watch(self, connections: set[Any], loop: asyncio.AbstractEventLoop) -> None:
        """Start the sweep over a server's connections (once per server)."""
        if self.watching is connections:
            return
        self.watching = connections

        def sweep() -> None:
            now = loop.time()
            for connection in list(connections):
                if isinstance(connection, BoundedHttpToolsProtocol):
                    connection.check_deadline(now)
            loop.call_later(self.tick_s, sweep)

        loop.call_later(self.tick_s, sweep)

    def note_refused(self, open_connections: int) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self.refused_logged_at >= LOG_EVERY_S:
            log.warning(
                "refused %d new connection(s) since the last such line: %d are open, "
                "max_connections is %d",
                self.refused,
                open_connections,
                self.max_connections,
            )
            self.refused, self.refused_logged_at = 0, now


def protocol(settings: Settings) -> type[asyncio.Protocol]:
    """What to pass as uvicorn.Config's `http`: uvicorn calls it as it would a protocol class;
    it pickles into worker processes (uvicorn's supervisor sends the Config to each)."""
    limits = ConnectionLimits.from_settings(settings)
    made = functools.partial(BoundedHttpToolsProtocol, limits=limits)
    return cast(type[asyncio.Protocol], made)


class Refusal(Exception):
    """Raised in a parser callback: feed_data raises it on as the context of its own error."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


HEAD, BODY = "head", "body"
on_headers_complete = HttpToolsProtocol.on_headers_complete


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One HTTP/1.1 connection, as uvicorn's, with the module's limits."""

    # Slots: uvicorn's ~28 attributes fill CPython's shared-key instance dict, which holds 30;
    # six more in the dict made every attribute look-up of a request slower (+6k instructions).
    __slots__ = ("body_bytes", "head_bytes", "in_head", "limits", "watched", "watched_since")

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.in_head = True  # receiving a request's head (or nothing yet); else its body
        self.head_bytes = 0  # received since the head began (whole reads: an upper bound)
        self.body_bytes = 0  # received since the headers were complete
        self.watched: tuple[str, Any] | None = None  # the phase the sweep last saw, and since
        self.watched_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limits = self.limits
        if len(self.connections) >= limits.max_connections:
            self.transport = transport  # never counted: logged in bulk, answered, closed
            limits.note_refused(len(self.connections))
            message = (
                f"the server has {len(self.connections)} open connections, the most it takes "
                f"(max_connections); retry in {RETRY_AFTER_S} s"
            )
            transport.write(self.response(503, message, retry_after=True))
            self.linger()
            return
        super().connection_made(transport)
        self.watched, self.watched_since = (HEAD, None), self.loop.time()
        limits.watch(self.connections, self.loop)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self.in_head:
            self.head_bytes += len(data)
        else:
            self.body_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:  # served as plain HTTP; uvicorn's two warnings per request would let any
                log.debug("%s: an Upgrade request, served as plain HTTP", self.peer)  # flood
            return
        except httptools.HttpParserError as e:
            self.refuse_request(e)
            return
        limits = self.limits
        if self.in_head:
            if self.head_bytes > limits.max_header_bytes:
                self.refuse(431, headers_too_large(limits.max_header_bytes))
        elif self.body_bytes > limits.max_body_bytes:
            self.refuse(413, body_too_large(limits.max_body_bytes))

    def on_headers_complete(self) -> None:
        limits = self.limits
        if len(self.headers) > limits.max_headers:
            count = len(self.headers)
            message = f"{count} request headers are more than {limits.max_headers} (max_headers)"
            raise Refusal(431, message)
        if self.head_bytes > limits.max_header_bytes:  # whole reads: count the head's own bytes
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > limits.max_header_bytes:
                raise Refusal(431, headers_too_large(limits.max_header_bytes))
        self.in_head = False
        self.body_bytes = 0
        on_headers_complete(self)  # not super(): this runs per request

    def on_message_complete(self) -> None:
        self.in_head = True
        self.head_bytes = 0
        cycle = self.cycle  # uvicorn's on_message_complete, inlined: this runs per request
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.more_body = False
        cycle.message_event.set()

    def shutdown(self) -> None:
        """uvicorn's drain starts: a request not answered by its end gets 503 JSON, just
        before uvicorn cancels it (uvicorn waits 0.1 s, then `drain_timeout_s`)."""
        super().shutdown()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self.loop.call_later(self.limits.drain_timeout_s, self.drain_expired, cycle)

    def drain_expired(self, cycle: Any) -> None:
        if self.cycle is cycle and not cycle.response_complete and not self.transport.is_closing():
            timeout = self.limits.drain_timeout_s
            message = f"the server is shutting down; this request was not done within {timeout:g} s"
            self.refuse(503, message, about_this_request=True, retry_after=True)

    def check_deadline(self, now: float) -> None:
        """The sweep: close a connection that stayed in a request's head or body too long."""
        cycle = self.cycle
        if self.transport.is_closing() or self.timeout_keep_alive_task is not None:
            self.watched = None  # closing, or idle between requests (uvicorn's keep-alive)
            return
        if not self.in_head:
            phase, timeout = (BODY, cycle), self.limits.body_timeout_s
        elif cycle is None or cycle.response_complete:
            phase, timeout = (HEAD, cycle), self.limits.header_timeout_s
        else:  # the app is answering; request_timeout_s bounds that
            self.watched = None
            return
        if phase != self.watched:
            self.watched, self.watched_since = phase, now
        elif now - self.watched_since >= timeout:
            self.time_out(phase[0], timeout)

    def time_out(self, phase: str, timeout: float) -> None:
        if phase == HEAD and self.head_bytes == 0:
            log.debug("%s: closed, nothing received in %g s (header_timeout_s)", self.peer, timeout)
            self.transport.close()
            return
        what = "headers" if phase == HEAD else "body"
        setting = "header_timeout_s" if phase == HEAD else "body_timeout_s"
        self.refuse(408, f"the request's {what} did not arrive within {timeout:g} s ({setting})")

    def refuse_request(self, error: httptools.HttpParserError) -> None:
        """What the parser refused, or what our callbacks refused through it."""
        cause = error.__context__
        if isinstance(cause, Refusal):
            self.refuse(cause.status, str(cause))
        elif isinstance(error, httptools.HttpParserCallbackError):  # a bug below the app
            log.error("%s: HTTP parser callback failed", self.peer, exc_info=cause or error)
            self.refuse(400, "invalid HTTP request")
        else:
            self.refuse(400, f"invalid HTTP request: {error}")

    @property
    def peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"

    def refuse(
        self,
        status: int,
        message: str,
        *,
        about_this_request: bool | None = None,
        retry_after: bool = False,
    ) -> None:
        """Answer `status` with `{"error": message}` where an answer can go, then close.

        A refusal concerns the request whose head is arriving (`in_head`), else the one in
        `self.cycle`; it can be answered unless an answer to another request would be cut.
        """
        log.info("%s -> %d: %s", self.peer, status, message)
        if about_this_request is None:
            about_this_request = not self.in_head
        if self.answerable(about_this_request):
            self.transport.write(self.response(status, message, retry_after))
        self.detach()
        self.linger()

    def answerable(self, about_this_request: bool) -> bool:
        cycle = self.cycle
        if cycle is None:
            return True
        if about_this_request:
            return not cycle.response_started
        return bool(cycle.response_complete) and not self.pipeline

    def response(self, status: int, message: str, retry_after: bool) -> bytes:
        body = json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        if retry_after:
            head.append(b"retry-after: %d\r\n" % RETRY_AFTER_S)
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        return b"".join(head) + body

    def detach(self) -> None:
        """What connection_lost does for uvicorn, before the socket is handed to `Lingering`:
        the app's receive() says disconnected, its answer goes nowhere, and the server no
        longer counts or waits for this connection."""
        self.connections.discard(self)
        self._unset_keepalive_if_required()
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.message_event.set()
        if self.flow is not None:
            self.flow.resume_writing()
            self.flow.resume_reading()
        self.pipeline.clear()

    def linger(self) -> None:
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
        if self.limits.lingering >= max(16, self.limits.max_connections // 8):
            self.loop.call_soon(transport.close)  # lingering enough already: descriptors first
            return
        transport.set_protocol(Lingering(transport, self.limits, self.loop))


class Lingering(asyncio.Protocol):
    """A refused connection's last moments: what arrives is dropped; it closes when the
    client closes its side, or after `LINGER_S`."""

    def __init__(
        self,
        transport: asyncio.Transport,
        limits: ConnectionLimits,
        loop: asyncio.AbstractEventLoop,
    ):
        self.limits = limits
        limits.lingering += 1
        self.timer = loop.call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> None:
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.limits.lingering -= 1


def headers_too_large(limit: int) -> str:
    return f"the request's headers are larger than {limit} bytes (max_header_bytes)"


def body_too_large(limit: int) -> str:
    return f"the request body exceeds the limit of {limit} bytes (max_body_bytes)"
