"""The data plane, free of any wire format: the model repository (versions, load, reload),
adaptive batching, per-model statistics, and the errors every front answers with. Both fronts
(`serving.http`, `serving.grpc`) call `DataPlane` and nothing below it."""
