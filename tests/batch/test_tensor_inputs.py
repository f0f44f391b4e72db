"""Arrow columns → one model input's rows, with a reason for every bad row (no Spark needed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from batch.spec import TensorInput
from batch.tensor_inputs import read

IMAGE = TensorInput("image", "pixels", "FP32", (1, 2, 2), finite=True)
TOKENS = TensorInput("ids", "ids", "INT64", (-1,), finite=False)


def rows(result, info: TensorInput) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """Each good row's values in its shape (what a run is fed)."""
    return [
        result.values[result.offsets[r] : result.offsets[r + 1]].reshape(result.shapes[r])
        for r in range(len(result.offsets) - 1)
        if r not in result.errors
    ]


def test_flat_and_nested_rows_give_the_same_values():
    values = np.arange(8, dtype=np.float64).reshape(2, 1, 2, 2)
    flat = read(pa.array(values.reshape(2, -1).tolist()), IMAGE)
    nested = read(pa.array(values.tolist()), IMAGE)
    for result in (flat, nested):
        assert result.errors == {}
        assert result.values.dtype == np.float32
        np.testing.assert_array_equal(np.stack(rows(result, IMAGE)), values)


def test_each_bad_row_has_its_reason():
    column = pa.array(
        [
            [0.0, 1.0, 2.0, 3.0],
            None,
            [1.0, 2.0, 3.0],
            [1.0, None, 2.0, 3.0],
            [float("nan"), 1.0, 2.0, 3.0],
            [float("inf"), 1.0, 2.0, 3.0],
            [1e39, 1.0, 2.0, 3.0],  # past float32: infinite once converted, as in the core
        ]
    )
    result = read(column, IMAGE)
    assert result.errors == {
        1: "'pixels' (input 'image') is null",
        2: "'pixels' (input 'image') has 3 values; expected 4 (shape [1, 2, 2])",
        3: "'pixels' (input 'image') holds a null value",
        4: "'pixels' (input 'image') holds NaN; this model does not accept NaN or infinity",
        5: "'pixels' (input 'image') holds infinity; this model does not accept NaN or infinity",
        6: "'pixels' (input 'image') holds infinity; this model does not accept NaN or infinity",
    }
    np.testing.assert_array_equal(rows(result, IMAGE)[0].ravel(), [0, 1, 2, 3])


def test_nested_rows_must_be_regular_and_of_the_input_shape():
    column = pa.array(
        [
            [[[1.0, 2.0], [3.0, 4.0]]],
            [[[1.0, 2.0], [3.0]]],  # ragged
            [[[1.0, 2.0], None]],  # a null inside
            [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]],  # regular, but [1, 2, 3]
        ]
    )
    result = read(column, IMAGE)
    label = "'pixels' (input 'image')"
    assert result.errors == {
        1: f"{label} is ragged: its arrays at depth 3 differ in length",
        2: f"{label} holds a null array",
        3: f"{label} has shape [1, 2, 3]; expected [1, 2, 2] (-1: any size)",
    }


def test_a_dynamic_dimension_takes_each_row_length():
    result = read(pa.array([[1, 2, 3], [4, 5], []], pa.list_(pa.int32())), TOKENS)
    assert result.errors == {}
    assert result.shapes.tolist() == [[3], [2], [0]]
    assert [r.tolist() for r in rows(result, TOKENS)] == [[1, 2, 3], [4, 5], []]
    assert result.values.dtype == np.int64


def test_a_flat_row_fills_the_one_dynamic_dimension():
    info = TensorInput("x", "x", "FP32", (-1, 2), finite=True)
    result = read(pa.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0]]), info)
    assert result.shapes[0].tolist() == [2, 2]
    assert result.errors == {
        1: "'x' has 3 values, not a multiple of 2 (shape [-1, 2], -1: any size)"
    }


def test_integers_only_within_the_input_range_and_no_fractions():
    small = TensorInput("b", "b", "INT8", (2,), finite=False)
    result = read(pa.array([[1, 2], [300, 1], [-129, 0]], pa.list_(pa.int64())), small)
    assert result.errors == {
        1: "'b' holds 300, out of the range of INT8",
        2: "'b' holds -129, out of the range of INT8",
    }
    fractions = read(pa.array([[1.5, 2.0]]), small)
    assert fractions.errors == {
        0: "'b' holds double values; INT8 takes integers (cast the column to an integer type)"
    }


def test_text_holding_numbers_is_read():
    result = read(pa.array([["1", "2", "3", "4"], ["1", "x", "3", "4"]]), IMAGE)
    assert result.errors == {1: "'pixels' (input 'image') holds 'x', not a number"}
    assert rows(result, IMAGE)[0].ravel().tolist() == [1, 2, 3, 4]
    tokens = read(pa.array([["1", "2"], ["1.5"]]), TOKENS)
    assert tokens.errors == {1: "'ids' holds '1.5', not an integer"}
    assert rows(tokens, TOKENS)[0].tolist() == [1, 2]


def test_scalars_booleans_and_text():
    scalar = TensorInput("x", "x", "FP64", (), finite=True)
    result = read(pa.array([1.5, None, 2.5]), scalar)
    assert result.errors == {1: "'x' is null"}
    assert result.shapes.shape == (3, 0)
    flags = TensorInput("f", "f", "BOOL", (2,), finite=False)
    assert read(pa.array([[True, False]]), flags).values.tolist() == [True, False]
    assert read(pa.array([[1, 0]]), flags).errors == {
        0: "'f' holds int64 values; BOOL takes booleans"
    }
    text = TensorInput("t", "t", "BYTES", (), finite=False)
    assert read(pa.array(["a", "B"]), text).values.tolist() == ["a", "B"]


def test_arrays_for_a_scalar_input_or_too_deep():
    scalar = TensorInput("x", "x", "FP32", (), finite=True)
    assert read(pa.array([[1.0], [1.0, 2.0]]), scalar).errors == {
        1: "'x' has 2 values; expected 1 (shape [])"
    }
    deep = read(pa.array([[[[[1.0]]]]]), IMAGE)
    assert deep.errors == {
        0: "'pixels' (input 'image') holds arrays nested 4 deep; input 'image' takes an array "
        "of shape [1, 2, 2] per row, flat or nested 3 deep"
    }
