"""Responses ready in the same turn of the loop leave together; a lone client's are not held.

Whether a response waited for a turn of the loop is observed without timing: a callback put
on the loop (`call_soon`) just before has run by the time the response is sent if, and only
if, the request gave up the loop on its way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
import pytest

import inference
from serving.core.batching import TURN_PROBE_EVERY
from serving.http.app import create_app
from serving.http.coalescing import Coalescer
from serving.http.fast_front import ServingApp
from serving.ops.settings import Settings
from tests.conftest import MODELS
from tests.serving.conftest import Server
from tests.serving.test_batching import outputs_of, rows_for, send_together, v2_body


async def turns(coalescer: Coalescer) -> int:
    """How many turns of the loop a response was held for: 0, 1, or 2 for two or more."""
    loop = asyncio.get_running_loop()
    marks: list[int] = []
    loop.call_soon(marks.append, 1)  # runs in the next turn
    loop.call_soon(lambda: loop.call_soon(marks.append, 2))  # and this in the one after
    await coalescer.hold()
    return max(marks, default=0)


async def lone_clients(coalescer: Coalescer) -> None:
    """Responses one at a time until the coalescer has learnt not to hold them."""
    for _ in range(20):
        if not coalescer.holding:
            return
        await coalescer.hold()
    raise AssertionError("lone responses are still held after 20 of them")


def test_responses_of_one_turn_are_held_together_for_one_turn_while_they_come_in_groups():
    async def main() -> None:
        coalescer = Coalescer()
        for _ in range(50):
            assert await asyncio.gather(*(turns(coalescer) for _ in range(4))) == [1] * 4
        assert coalescer.holding

    asyncio.run(main())


def test_a_lone_clients_responses_stop_being_held_but_probes_go_on():
    async def main() -> None:
        coalescer = Coalescer()
        first = [await turns(coalescer) for _ in range(20)]
        assert first[:5] == [1] * 5  # a new server holds from its first requests
        assert not coalescer.holding
        later = [await turns(coalescer) for _ in range(10 * TURN_PROBE_EVERY)]
        assert sorted(later) == [0] * (9 * TURN_PROBE_EVERY + 6) + [1] * 10  # every 16th

    asyncio.run(main())


def test_clients_that_start_to_overlap_are_noticed():
    async def main() -> None:
        coalescer = Coalescer()
        await lone_clients(coalescer)
        for _ in range(TURN_PROBE_EVERY):  # a probe finds the others of its turn
            await asyncio.gather(*(turns(coalescer) for _ in range(5)))
            if coalescer.holding:
                break
        assert coalescer.holding
        assert await asyncio.gather(*(turns(coalescer) for _ in range(4))) == [1] * 4

    asyncio.run(main())


def test_a_cancelled_probe_leaves_no_group_open():
    async def main() -> None:
        coalescer = Coalescer()
        await lone_clients(coalescer)
        for _ in range(TURN_PROBE_EVERY):  # responses until one is a probe, held
            waiting = asyncio.ensure_future(coalescer.hold())
            await asyncio.sleep(0)
            if not waiting.done():
                break
        assert not waiting.done()
        waiting.cancel()  # e.g. the server stops
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not coalescer.holding
        # a group left open would hold the next lone response, and count it as a group of two
        assert [await turns(coalescer) for _ in range(3)] == [0] * 3

    asyncio.run(main())


@asynccontextmanager
async def served(**settings: Any) -> AsyncIterator[ServingApp]:
    """The real app over the committed models, its lifespan run, models loaded."""
    app = create_app(Settings(repo=MODELS, inline_max_us=1e9, **settings))
    async with app.router.lifespan_context(app):
        while not app.dataplane.ready:
            await asyncio.sleep(0.02)
        yield app


class Exchange:
    """One request called on the ASGI app, recording the order of what happens on the loop."""

    def __init__(self, app: ServingApp, ages: list[int], log: list[str], name: str):
        self.app, self.log, self.name = app, log, name
        self.body = orjson.dumps({"instances": [{"age": a} for a in ages]})
        self.status = 0
        self.answer = b""

    async def __call__(self) -> None:
        scope = {
            "type": "http", "method": "POST", "path": "/v1/models/side_effects:predict",
            "headers": [(b"content-type", b"application/json")], "query_string": b"",
            "root_path": "", "app": self.app,
        }  # fmt: skip
        await self.app(scope, self.receive, self.send)

    async def receive(self) -> dict[str, Any]:
        self.log.append(f"read {self.name}")
        return {"type": "http.request", "body": self.body, "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.log.append(f"send {self.name}")
            self.status = message["status"]
        else:
            self.answer += message.get("body", b"")


def test_concurrent_requests_are_all_answered_before_the_first_response_leaves():
    async def main() -> None:
        async with served() as app:
            log: list[str] = []
            exchanges = [Exchange(app, [20 + i] * (i + 1), log, str(i)) for i in range(5)]
            exchanges.append(Exchange(app, [], log, "bad"))  # fails alone, in the same group
            await asyncio.gather(*(e() for e in exchanges))
            reads = [i for i, entry in enumerate(log) if entry.startswith("read")]
            sends = [i for i, entry in enumerate(log) if entry.startswith("send")]
            assert len(sends) == 6 and max(reads) < min(sends), log
            for i, exchange in enumerate(exchanges[:5]):
                assert exchange.status == 200
                assert len(orjson.loads(exchange.answer)["predictions"]) == i + 1
            assert exchanges[5].status == 400
            assert b"empty" in exchanges[5].answer

    asyncio.run(main())


def test_a_lone_clients_responses_leave_without_a_turn_of_the_loop():
    async def main() -> None:
        async with served() as app:
            turns = []
            for i in range(4 * TURN_PROBE_EVERY):
                log: list[str] = []
                turned: list[bool] = []
                asyncio.get_running_loop().call_soon(turned.append, True)
                exchange = Exchange(app, [30 + i % 50], log, "one")
                await exchange()
                assert exchange.status == 200
                turns.append(bool(turned))
            assert sum(turns[-3 * TURN_PROBE_EVERY :]) <= 3  # the probes alone

    asyncio.run(main())


def test_a_real_server_under_concurrent_clients_answers_each_its_own(server: Server):
    """Without batching, concurrent responses are held and leave together: each still reaches
    its own client, the bad one included."""
    iris = inference.load(MODELS / "iris")
    for round_ in range(3):
        counts = [1 + (i * 5 + round_) % 7 for i in range(15)]
        bodies = [
            ("/v2/models/iris/infer", v2_body(rows_for(16 * round_ + i, n)))
            for i, n in enumerate(counts)
        ]
        bodies.append(("/v1/models/iris:predict", {"instances": []}))
        answers = send_together(server.url, bodies)
        for i, (count, answer) in enumerate(zip(counts, answers[:-1], strict=True)):
            expected = iris.predict(rows_for(16 * round_ + i, count))
            got = outputs_of(answer)
            np.testing.assert_allclose(got["scores"], expected.scores, rtol=1e-6, atol=1e-6)
        assert answers[-1].status_code == 400
        assert "empty" in answers[-1].json()["error"]
