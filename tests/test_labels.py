"""The label map: the user's labels <-> output rows, and what it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgecl import DataError, UsageError, read_onnx_labels
from edgecl.labels import ONNX_LABELS_KEY, LabelMap, as_labels


@pytest.mark.parametrize("labels", [[7, 107, 207], ["cat", "dog", "owl"]])
def test_labels_map_to_rows_in_order_and_back(labels):
    m = LabelMap(labels)
    y = np.asarray([labels[2], labels[0], labels[2], labels[1]])
    rows = m.rows(as_labels(y))
    assert rows.tolist() == [2, 0, 2, 1]  # the order given, not sorted
    back = m.decode(rows)
    assert back.tolist() == y.tolist()
    assert back.dtype.kind == ("U" if isinstance(labels[0], str) else "i")
    assert LabelMap.from_json(json.loads(json.dumps(m.to_json()))).labels == m.labels


def test_unknown_labels_come_in_order_of_first_appearance_and_extend_the_map():
    m = LabelMap([107])
    y = as_labels(np.array([5, 107, -3, 5, 9, -3]))
    assert m.rows(y).tolist() == [-1, 0, -1, -1, -1, -1]
    new = m.unknown(y)
    assert new == [5, -3, 9]
    grown = m.extended(new)
    assert grown.labels == (107, 5, -3, 9) and m.labels == (107,)  # the old map is unchanged
    assert grown.rows(y).tolist() == [1, 0, 2, 1, 3, 2]


@pytest.mark.parametrize("y", [
    np.array([0.0, 1.0]), np.array([0.5, 1.0]), np.array([np.nan, 1.0]),
    np.array([True, False]), [True, 1], [1, "1"], ["cat", 2.0], [None, 1], [1 + 0j],
    [{"y": 1}], np.zeros(2, dtype=[("a", "f4")]),
], ids=["integral floats", "floats", "NaN", "bools", "a bool in a list", "int and str",
        "str and float", "None", "complex", "dict", "void"])
def test_labels_that_are_not_integers_or_strings_are_refused(y):
    with pytest.raises(DataError) as error:
        LabelMap().check(y, n=len(y))
    assert "\n" not in str(error.value)


def test_a_mixture_is_refused_rather_than_turned_into_strings():
    # np.asarray([1, "1"]) would give two strings, "1" and "1": one class, silently.
    with pytest.raises(DataError, match="mix of integers and strings"):
        as_labels([1, "1"])


def test_strings_bytes_and_numpy_integers_are_normalised():
    assert as_labels(np.array([b"cat", b"dog"])).tolist() == ["cat", "dog"]
    assert as_labels([np.int16(3), 4]).dtype == np.int64
    assert as_labels(np.array([2**63], dtype=np.uint64)[:0]).dtype == np.int64
    with pytest.raises(DataError, match="too large for int64"):
        as_labels(np.array([2**63], dtype=np.uint64))
    with pytest.raises(DataError, match="too large for int64"):
        as_labels([2**70])
    with pytest.raises(DataError, match="not UTF-8"):
        as_labels(np.array([b"\xff"]))


def test_a_map_takes_one_kind_and_no_duplicates():
    with pytest.raises(DataError, match="more than once"):
        LabelMap([3, 4, 3])
    with pytest.raises(DataError, match="strings"):
        LabelMap([3, 4]).check(np.array(["3", "4"]), n=2)
    with pytest.raises(DataError, match=r"shape \(3,\)"):
        LabelMap([3, 4]).check(np.array([3, 4]), n=3)


def test_onnx_labels_are_read_back_and_a_model_without_them_is_a_clear_error(tmp_path):
    from torch import nn

    from edgecl.backbones import export_onnx

    path = export_onnx(nn.Sequential(nn.Linear(3, 2)), tmp_path / "m.onnx", input_shape=(3,),
                       metadata={ONNX_LABELS_KEY: json.dumps(["cat", "dog"])})
    assert read_onnx_labels(path) == ["cat", "dog"]
    bare = export_onnx(nn.Sequential(nn.Linear(3, 2)), tmp_path / "b.onnx", input_shape=(3,))
    with pytest.raises(UsageError, match="no edgecl.labels"):
        read_onnx_labels(bare)
    with pytest.raises(UsageError, match="not found"):
        read_onnx_labels(tmp_path / "missing.onnx")
