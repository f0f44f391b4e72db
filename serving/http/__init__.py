"""The HTTP front: the FastAPI app and its routes, the fast front that serves the predict
routes without FastAPI's per-request stack, the middlewares both share, and the connection
limits of the uvicorn protocol."""
