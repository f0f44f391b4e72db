"""The HTTP floor: the fastest answers a Python ASGI server can give, to compare our routes with.

Both accept the same POST bodies as the real endpoints and return a small constant.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

BODY = b'{"ok":true}'


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: read the body, answer a constant."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


fastapi_app = FastAPI()


@fastapi_app.post("/{path:path}")
async def constant() -> dict[str, bool]:
    return {"ok": True}
