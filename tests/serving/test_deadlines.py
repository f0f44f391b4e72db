"""The one request timeout (serving/core/deadlines.py): a future not answered in time fails with
InferenceTimeout, an answered one is let go, and a run in the executor that outlasts it is
answered 504 while the loop goes on."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import numpy as np
import pytest

from serving.core.deadlines import Deadlines
from serving.core.errors import InferenceTimeout
from serving.http.app import create_app
from serving.ops.settings import Settings
from tests.conftest import MODELS


def test_late_futures_fail_and_answered_ones_are_let_go():
    async def scenario() -> tuple[list[Any], int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(0.05)
        answered = [loop.create_future() for _ in range(100)]
        for future in answered:
            deadlines.watch(future)
            future.set_result(1)
        late = loop.create_future()
        deadlines.watch(late)  # the answered ones ahead of it leave the queue here
        held = len(deadlines)
        outcome = await asyncio.gather(late, return_exceptions=True)
        return outcome, held

    outcome, held = asyncio.run(scenario())
    assert held == 1
    assert isinstance(outcome[0], InferenceTimeout)
    assert str(outcome[0]) == "inference took longer than 0.05s"


def test_a_run_longer_than_the_timeout_is_a_timeout_and_its_late_failure_dropped_quietly():
    app = create_app(Settings(repo=MODELS, models=["side_effects"], request_timeout_s=0.05))
    plane = app.dataplane
    plane.load_all()
    model = plane.model("side_effects")

    def outputs(feeds: Any, names: Any) -> Any:  # a run that fails after the timeout
        time.sleep(0.3)
        raise RuntimeError("late")

    async def scenario() -> list[Any]:
        seen: list[Any] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: seen.append(context))
        with pytest.raises(InferenceTimeout):
            await plane._in_executor(model, {"features": np.ones((1, 1), np.float32)}, None)
        await asyncio.sleep(0.4)  # the run ends and fails; nobody waits for it any more
        gc.collect()  # where asyncio reports an error never read
        return seen

    model.outputs = outputs  # type: ignore[method-assign]
    try:
        assert asyncio.run(scenario()) == []
    finally:
        del model.outputs
        plane.close()
