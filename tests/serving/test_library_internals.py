"""Where the service leans on a library's internals for speed, a check here fails loudly on an
upgrade that changes them, naming what to read again. (uvicorn's protocol internals, which
serving/http/connections.py subclasses: tests/serving/test_connections.py. prometheus_client's
multiprocess file internals that serving/ops/cheap_metrics.py writes: the test of
tests/serving/test_shared_metrics.py that reads them back with prometheus_client's own
`MultiProcessCollector`. uvicorn's
supervisor pickling our listening sockets into its workers, serving/process/listener.py: the
worker tests of tests/serving/test_listener.py, which fail if a worker does not serve.)"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import numpy as np
import onnxruntime as ort
import starlette
from starlette.responses import Response

import inference
from inference.model import _direct_run
from serving.protocol.codec import JSON_RAW_HEADERS, EncodedResponse
from tests.conftest import MODELS


def test_the_session_run_without_the_python_wrapper_is_still_there():
    model = inference.load(MODELS / "side_effects")
    session = model.session
    run = _direct_run(session)
    assert run is not session.run, (
        f"onnxruntime {ort.__version__} has no InferenceSession._sess.run: inference/model.py's "
        "_direct_run now falls back to the public run (correct, but slower): read the new "
        "onnxruntime/capi/onnxruntime_inference_collection.py and update"
    )
    feed = {"features": np.array([[70.0], [20.0]], np.float32)}
    names = [o.name for o in session.get_outputs()]
    for ours, public in zip(run(names, feed, None), session.run(names, feed), strict=True):
        np.testing.assert_array_equal(ours, public)


def test_an_encoded_response_sends_what_starlettes_own_would():
    """EncodedResponse skips `Response.__init__` and sets the attributes `Response.__call__`
    reads; if Starlette's `__call__` reads another one, this shows it."""
    body = b'{"predictions":[1]}'
    ours = asyncio.run(_sent(EncodedResponse(body)))
    theirs = asyncio.run(_sent(Response(body, media_type="application/json")))
    assert ours == theirs, f"starlette {starlette.__version__} changed Response.__call__"
    source = inspect.getsource(Response.__call__)
    read = {
        a for a in ("status_code", "raw_headers", "body", "background") if f"self.{a}" in source
    }
    assert read == {"status_code", "raw_headers", "body", "background"}
    assert dict(JSON_RAW_HEADERS)[b"content-type"] == b"application/json"


async def _sent(response: Response) -> list[Any]:
    messages: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        messages.append({k: sorted(v) if k == "headers" else v for k, v in message.items()})

    await response({"type": "http", "method": "POST", "headers": []}, receive, send)
    return messages
