"""The classification extension (Triton's, over HTTP and gRPC): a requested output with the
parameter `classification: N` (tritonclient's `InferRequestedOutput(name, class_count=N)`) is
answered as its N largest values, as BYTES strings `"value:index"`, or `"value:index:label"`
for a classifier's scores output with class labels. The value has six decimals, as Triton
prints it. For a model with a batch axis each row keeps its own N (shape [rows, N]); otherwise
the whole tensor gives N (shape [N]). N larger than the classes is cut to their number.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inference.metadata import BundleMetadata
from serving.core.errors import BadRequest

PARAMETER = "classification"
MISPLACED = (
    "'classification' is a parameter of a requested output (the classification extension), "
    "not of the request"
)
NUMERIC = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                     "FP16", "FP32", "FP64"})  # fmt: skip


def class_count(output: str, value: Any, metadata: BundleMetadata) -> int:
    """The requested number of classes, checked: a positive integer, of a numeric output."""
    if type(value) is not int or value < 1:
        raise BadRequest(
            f"output {output!r}: parameter {PARAMETER!r} must be a positive integer (how many "
            f"top classes to return), got {value!r}"
        )
    datatype = next(o.datatype for o in metadata.outputs if o.name == output)
    if datatype not in NUMERIC:
        raise BadRequest(
            f"output {output!r}: parameter {PARAMETER!r} needs a numeric output, and this one "
            f"is {datatype}"
        )
    return value


def classify(
    outputs: dict[str, np.ndarray], counts: dict[str, int], metadata: BundleMetadata
) -> dict[str, np.ndarray]:
    """`outputs` with each output named in `counts` replaced by its top classes as text."""
    scores = metadata.output("scores")
    labelled = scores.name if scores is not None and metadata.classes else None
    batched = metadata.batchable
    answer = dict(outputs)
    for name, count in counts.items():
        labels = metadata.classes if name == labelled else None
        answer[name] = _top(outputs[name], count, labels, batched)
    return answer


def _top(array: np.ndarray, count: int, labels: list[str] | None, batched: bool) -> np.ndarray:
    rows = array.reshape(len(array), -1) if batched and array.ndim else array.reshape(1, -1)
    count = min(count, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :count]
    texts = [
        [_text(float(row[i]), int(i), labels) for i in indices]
        for row, indices in zip(rows, order, strict=True)
    ]
    result = np.array(texts, dtype=object).reshape(len(rows), count)
    return result if batched and array.ndim else result.reshape(count)


def _text(value: float, index: int, labels: list[str] | None) -> str:
    if labels is not None and index < len(labels):
        return f"{value:f}:{index}:{labels[index]}"
    return f"{value:f}:{index}"
