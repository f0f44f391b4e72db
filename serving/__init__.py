"""The prediction service (`python -m serving`), read top-down:

- `core/`: the data plane (repository, batching, statistics, errors), no wire format;
- `protocol/`: the Open Inference Protocol's schemas and tensor codecs, shared by both fronts;
- `http/`: the FastAPI app, its routes and the fast front for the predict routes;
- `grpc/`: the same service over gRPC;
- `ops/`: settings, logs, metrics; `process/`: sockets and supervision for `--workers N`.
"""
