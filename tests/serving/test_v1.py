"""The friendly v1 endpoint: named features, rows or bare values in; readable predictions out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import inference
from tests.conftest import MODELS
from tests.serving.conftest import ClientFactory

PREDICT = "/v1/models/side_effects:predict"
IRIS = inference.load(MODELS / "iris")


@pytest.mark.parametrize(
    "instances",
    [[{"age": 70}, {"age": 20}], [[70], [20]], [70, 20], [70.0, 20.0]],
    ids=["objects", "rows", "bare values", "floats"],
)
def test_every_instance_form_gives_the_same_answer(client: TestClient, instances: list[Any]):
    response = client.post(PREDICT, json={"instances": instances})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"]) == ("side_effects", "1")
    expected = inference.load(MODELS / "side_effects").predict([[70.0], [20.0]])
    for prediction, label, index, scores in zip(
        body["predictions"], expected.labels, expected.class_index, expected.scores, strict=True
    ):
        assert prediction["label"] == label
        assert prediction["class_index"] == index
        assert list(prediction["scores"]) == ["no_side_effects", "side_effects"]
        np.testing.assert_allclose(list(prediction["scores"].values()), scores, atol=1e-6)


def test_iris_named_features_and_version_route(client: TestClient):
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    names = IRIS.metadata.feature_names
    response = client.post(
        "/v1/models/iris/versions/1:predict",
        json={"instances": [dict(zip(names, r, strict=True)) for r in rows]},
    )
    assert [p["label"] for p in response.json()["predictions"]] == IRIS.predict(rows).labels


def test_status_lists_the_expected_features(client: TestClient):
    status = client.get("/v1/models/iris").json()
    assert status["ready"] is True
    assert status["features"] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert status["classes"] == ["setosa", "versicolor", "virginica"]
    assert status["version"] == "1"
    assert client.get("/v1/models").json() == {"models": ["digits", "iris", "side_effects"]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"instances": [{"age": 70, "weight": 80}]},
            400,
            "row 0: unknown feature(s) 'weight'; this model expects: age",
        ),
        (
            {"instances": [{"agee": 70}]},
            400,
            "row 0: missing feature(s) 'age' and unknown feature(s) 'agee'",
        ),
        ({"instances": [{"age": 70}, [20]]}, 400, "mixes feature objects and rows"),
        ({"instances": []}, 400, "'instances' must be a non-empty list"),
        ({"instances": {"age": 70}}, 400, "'instances' must be a non-empty list"),
        ({"rows": [[70]]}, 400, 'the request body must be a JSON object {"instances": [...]}'),
        (
            {"instances": [{"age": "seventy"}]},
            400,
            "features must be numbers, got text such as 'seventy'",
        ),
        ({"instances": [{"age": None}]}, 400, "features must be numbers, got null"),
        ({"instances": [{"age": True}, {"age": 3}]}, 400, "got true/false among them"),
        ({"instances": [[70], [False]]}, 400, "got true/false among them"),
        (
            {"instances": [[70, 1]]},
            400,
            "expected a 2-D batch of shape [rows, 1] (age), got shape [1, 2]",
        ),
        (
            {"instances": [[[70]]]},
            400,
            "expected a 2-D batch of shape [rows, 1] (age), got shape [1, 1, 1]",
        ),
    ],
)
def test_bad_instances_are_explained(client: TestClient, body: Any, status: int, message: str):
    response = client.post(PREDICT, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_bare_values_need_a_one_feature_model(client: TestClient):
    response = client.post("/v1/models/iris:predict", json={"instances": [5.1, 3.5, 1.4, 0.2]})
    assert response.status_code == 400
    assert "expected a 2-D batch of shape [rows, 4]" in response.json()["error"]


def test_errors_on_v1_are_json_too(client: TestClient):
    assert client.post("/v1/models/nope:predict", json={"instances": [1]}).json() == {
        "error": "unknown model 'nope'; models: digits, iris, side_effects"
    }
    response = client.post(PREDICT, content=b"{", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_regression_predictions_are_plain_values(make_client: ClientFactory, tmp_path: Path):
    import torch

    from training import export_module

    line = torch.nn.Linear(1, 1)
    with torch.no_grad():
        line.weight.fill_(3.0)
        line.bias.fill_(1.0)
    export_module(line, tmp_path / "line", feature_names=["x"])
    client = make_client(repo=tmp_path)
    body = client.post("/v1/models/line:predict", json={"instances": [{"x": 2}, {"x": 5}]}).json()
    assert body["predictions"] == [7.0, 16.0]
