"""Arrow columns to features, with a reason for every bad row (no Spark needed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from batch.convert import from_array_column, from_columns


def test_numbers_of_any_type_become_float32():
    features = from_columns([pa.array([1, 2, 3]), pa.array([0.5, 1.5, 2.5])], ["a", "b"])
    np.testing.assert_array_equal(features.matrix, [[1, 0.5], [2, 1.5], [3, 2.5]])
    assert features.matrix.dtype == np.float32
    assert features.errors == {}


def test_each_bad_row_has_its_reason_and_good_rows_are_kept():
    features = from_columns(
        [
            pa.array([1.0, None, float("nan"), float("inf"), 5.0]),
            pa.array(["1", "2", "3", "4", "x"]),
        ],
        ["a", "b"],
    )
    assert features.errors == {
        1: "feature 'a' is null",
        2: "feature 'a' is NaN",
        3: "feature 'a' is infinite",
        4: "feature 'b': 'x' is not a number",
    }
    assert features.bad.tolist() == [False, True, True, True, True]
    np.testing.assert_array_equal(features.matrix[0], [1.0, 1.0])
    assert np.isfinite(features.matrix).all()  # bad rows are zeroed, safe to run
    assert features.error_array().to_pylist()[0] is None


def test_text_that_holds_numbers_is_read():
    features = from_columns([pa.array(["70", "20.5", None])], ["age"])
    np.testing.assert_array_equal(features.matrix[:2, 0], [70.0, 20.5])
    assert features.errors == {2: "feature 'age' is null"}


def test_array_column_layout():
    column = pa.array([[1.0, 2.0], None, [1.0], [3.0, None], [5.0, 6.0]])
    features = from_array_column(column, ["a", "b"], "x")
    assert features.errors == {
        1: "'x' is null",
        2: "'x' has 1 values; expected 2",
        3: "feature 'b' is NaN",
    }
    np.testing.assert_array_equal(features.matrix[[0, 4]], [[1, 2], [5, 6]])


def test_nan_inside_well_formed_arrays_is_reported_not_a_crash():
    features = from_array_column(pa.array([[1.0, 2.0], [float("nan"), 1.0]]), ["a", "b"], "x")
    assert features.errors == {1: "feature 'a' is NaN"}
    np.testing.assert_array_equal(features.matrix, [[1, 2], [0, 0]])


def test_integer_arrays_of_any_size():
    features = from_array_column(pa.array([[2**40, 1]], pa.list_(pa.int64())), ["a", "b"], "x")
    assert features.errors == {}
    assert features.matrix[0, 0] == np.float32(2**40)


def test_an_empty_batch():
    features = from_columns([pa.array([], pa.float64())], ["a"])
    assert features.matrix.shape == (0, 1)
    assert len(features.error_array()) == 0
