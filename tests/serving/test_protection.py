"""API key, body and batch limits, timeouts: 4xx/5xx with a JSON message, never a crash."""

from __future__ import annotations

import pytest

from inference.model import Latency
from tests.serving.conftest import ClientFactory

BODY = {"instances": [70]}
PREDICT = "/v1/models/side_effects:predict"


@pytest.fixture
def locked(make_client: ClientFactory):  # type: ignore[no-untyped-def]
    return make_client(api_key="s3cret")


def test_no_key_is_401_on_every_route_but_the_probes(locked):  # type: ignore[no-untyped-def]
    for method, path in [
        ("post", PREDICT),
        ("get", "/v2"),
        ("get", "/metrics"),
        ("get", "/docs"),
        ("get", "/v2/models/iris"),
        ("post", "/v2/repository/index"),
    ]:
        response = getattr(locked, method)(path)
        assert response.status_code == 401, path
        assert "missing or wrong API key" in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert locked.get("/v2/health/live").status_code == 200
    assert locked.get("/v2/health/ready").status_code == 200


def test_bearer_and_x_api_key_both_work(locked):  # type: ignore[no-untyped-def]
    assert (
        locked.post(PREDICT, json=BODY, headers={"Authorization": "Bearer s3cret"}).status_code
        == 200
    )
    assert locked.post(PREDICT, json=BODY, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert (
        locked.post(PREDICT, json=BODY, headers={"Authorization": "Bearer wrong"}).status_code
        == 401
    )


def test_no_key_configured_means_open(make_client: ClientFactory):
    assert make_client().post(PREDICT, json=BODY).status_code == 200


def test_body_over_the_limit_is_413(make_client: ClientFactory):
    client = make_client(max_body_bytes=100)
    response = client.post(PREDICT, json={"instances": [70] * 100})
    assert response.status_code == 413
    assert "exceeds the limit of 100 bytes" in response.json()["error"]
    assert client.post(PREDICT, json=BODY).status_code == 200


def test_streamed_body_over_the_limit_is_413(make_client: ClientFactory):
    client = make_client(max_body_bytes=100)

    def chunks():  # type: ignore[no-untyped-def]  # no Content-Length: chunked transfer
        yield b'{"instances": ['
        for _ in range(50):
            yield b"70, "
        yield b"70]}"

    response = client.post(PREDICT, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_gzip_bomb_is_413(make_client: ClientFactory):
    import gzip

    client = make_client(max_body_bytes=10_000)
    bomb = gzip.compress(b" " * 5_000_000)
    response = client.post(
        "/v2/models/side_effects/infer", content=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 413
    assert "decompressed body exceeds the limit" in response.json()["error"]


def test_too_many_rows_is_413(make_client: ClientFactory):
    client = make_client(max_batch_rows=3)
    response = client.post(PREDICT, json={"instances": [1, 2, 3, 4]})
    assert response.status_code == 413
    assert "4 rows in one request exceed the limit of 3" in response.json()["error"]


@pytest.mark.parametrize("noisy_warm_up", [False, True])
def test_timeout_is_504_and_the_service_goes_on(make_client: ClientFactory, noisy_warm_up: bool):
    client = make_client(request_timeout_s=1e-9)
    if noisy_warm_up:  # a slow one-row run fitted a flat cost: 50,000 rows must not look free
        model = client.app.dataplane.model("side_effects")  # type: ignore[attr-defined]
        model.latency = Latency(fixed_s=25e-6, per_row_s=0.0, probe_rows=256, probe_s=22e-6)
    response = client.post(PREDICT, json={"instances": list(range(1, 50_000))})
    assert response.status_code == 504
    assert "inference took longer than" in response.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200
