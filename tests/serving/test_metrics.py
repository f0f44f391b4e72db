"""Prometheus metrics: requests by model, version, endpoint and status; times; rows; loads."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


def test_metrics_after_traffic(make_client):  # type: ignore[no-untyped-def]
    client: TestClient = make_client()
    for _ in range(3):
        client.post("/v1/models/side_effects:predict", json={"instances": [70, 20]})
    client.post("/v1/models/side_effects:predict", json={"instances": ["x"]})
    client.get("/v2/models/no_such_model")
    client.get("/random/path/that/does/not/exist")
    text = client.get("/metrics").text

    endpoint = "/v1/models/{name}:predict"
    assert (
        sample(
            text,
            "serving_requests_total",
            model="side_effects",
            version="1",
            endpoint=endpoint,
            status="200",
        )
        == 3
    )
    assert (
        sample(
            text,
            "serving_requests_total",
            model="side_effects",
            version="1",
            endpoint=endpoint,
            status="400",
        )
        == 1
    )
    assert (
        sample(
            text, "serving_request_duration_seconds_count", model="side_effects", endpoint=endpoint
        )
        == 4
    )
    assert (
        sample(text, "serving_inference_duration_seconds_count", model="side_effects", version="1")
        == 3
    )
    assert sample(text, "serving_request_rows_sum", model="side_effects", version="1") == 6
    assert sample(text, "serving_model_load_duration_seconds", model="iris", version="1") > 0
    assert "serving_requests_in_flight" in text
    # an unknown model name or path never becomes a label value
    assert "no_such_model" not in text and "random/path" not in text
    assert sample(text, "serving_requests_total", endpoint="unmatched", status="404") == 1
    assert re.search(
        r'serving_requests_total\{endpoint="/v2/models/\{name\}",model="",status="404"', text
    )
