"""Built-in datasets, the user .npz loader and the shared array checks."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecl.data import Dataset, list_datasets, load_dataset, load_npz, validate_arrays
from edgecl.errors import DataError, UsageError

# ------------------------------------------------------------------------------- built-ins


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset("mnist5k", seed=0)


@pytest.fixture(scope="module")
def mnist1d() -> Dataset:
    return load_dataset("mnist1d:600", seed=0)


def _check_common(d: Dataset) -> None:
    assert d.x_train.dtype == np.float32 and d.x_test.dtype == np.float32
    assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    assert d.classes == tuple(range(10)) and d.n_classes == 10
    assert d.input_shape == d.x_train.shape[1:] == d.x_test.shape[1:]
    assert set(np.unique(d.y_train)) == set(range(10))
    assert np.isfinite(d.x_train).all() and np.isfinite(d.x_test).all()


def test_list_datasets_names_the_builtins() -> None:
    assert list_datasets() == ["digits", "mnist1d", "mnist5k"]


def test_digits_are_8x8_images_in_unit_range_with_a_stratified_quarter_held_out(digits) -> None:
    _check_common(digits)
    assert digits.name == "digits"
    assert digits.input_shape == (1, 8, 8)
    assert len(digits.y_train) + len(digits.y_test) == 1797
    assert abs(len(digits.y_test) / 1797 - 0.25) < 0.01
    assert digits.x_train.min() == 0.0 and digits.x_train.max() == 1.0
    # Stratified: every class keeps about a quarter of its samples in test.
    n_test = np.bincount(digits.y_test, minlength=10)
    n_all = n_test + np.bincount(digits.y_train, minlength=10)
    assert np.all(np.abs(n_test / n_all - 0.25) < 0.02)


def test_mnist5k_is_real_mnist_with_125_test_images_per_digit(mnist5k) -> None:
    _check_common(mnist5k)
    assert mnist5k.input_shape == (1, 28, 28)
    assert len(mnist5k.y_train) == 3750 and len(mnist5k.y_test) == 1250
    assert np.all(np.bincount(mnist5k.y_test) == 125)
    assert mnist5k.x_train.min() >= 0.0 and mnist5k.x_train.max() <= 1.0
    assert mnist5k.x_train.flags.writeable  # callers get their own copy, not the cache


def test_mnist1d_uses_its_own_80_20_split_of_n_samples(mnist1d) -> None:
    _check_common(mnist1d)
    assert mnist1d.name == "mnist1d:600"
    assert mnist1d.input_shape == (40,)
    assert len(mnist1d.y_train) == 480 and len(mnist1d.y_test) == 120


def test_mnist1d_leaves_the_global_random_state_alone() -> None:
    np.random.seed(123)
    random.seed(123)
    expected = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(123)
    load_dataset("mnist1d:100", seed=5)
    assert (np.random.random(), random.random()) == expected


@pytest.mark.parametrize("name", ["mnist1d:abc", "mnist1d:10", "digits:5", "cifar10", "npz"])
def test_bad_dataset_names_raise_data_error_listing_the_choices(name: str) -> None:
    with pytest.raises(DataError, match="mnist1d") as info:
        load_dataset(name)
    assert isinstance(info.value, UsageError)  # the CLI turns it into exit code 2


def test_unknown_name_mentions_the_npz_form() -> None:
    with pytest.raises(DataError, match=r"npz:PATH"):
        load_dataset("cifar10")


def test_same_seed_gives_identical_split_and_other_seed_a_different_one(digits) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    np.testing.assert_array_equal(again.x_train, digits.x_train)
    np.testing.assert_array_equal(again.y_test, digits.y_test)
    assert not np.array_equal(other.x_train, digits.x_train)


def test_mnist1d_is_deterministic_per_seed() -> None:
    a, b, c = (load_dataset("mnist1d:100", seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_missing_optional_dependency_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now raises ImportError
    with pytest.raises(DataError, match=r"scikit-learn: pip install 'edgecl\[data\]'"):
        load_dataset("digits")


# ------------------------------------------------------------------------------ npz files


def _save(tmp_path: Path, name: str = "data.npz", **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _valid(n: int = 40, labels=(0, 1, 2, 3)) -> dict[str, np.ndarray]:
    y = np.resize(np.asarray(labels, dtype=np.int64), n)
    x = np.stack([y.astype(np.float32), np.arange(n, dtype=np.float32)], axis=1)  # x[:, 0] = label
    return {"x": x, "y": y}


def test_npz_without_test_arrays_is_split_by_class_and_seed(tmp_path) -> None:
    path = _save(tmp_path, **_valid(40))
    d = load_npz(path, seed=0)
    assert d.name == f"npz:{path}"
    assert len(d.y_train) == 28 and len(d.y_test) == 12
    assert np.all(np.bincount(d.y_test) == 3)  # 25% of each class's 10 samples, rounded
    # Train and test together are the file's samples, each once.
    ids = np.concatenate([d.x_train[:, 1], d.x_test[:, 1]])
    assert sorted(ids) == list(range(40))
    again, other = load_npz(path, seed=0), load_npz(path, seed=1)
    np.testing.assert_array_equal(again.x_test, d.x_test)
    assert not np.array_equal(other.x_test, d.x_test)


def test_npz_labels_are_remapped_to_0_k_in_sorted_order(tmp_path) -> None:
    arrays = _valid(30, labels=(10, -3, 5))
    path = _save(tmp_path, **arrays, x_test=arrays["x"][:6], y_test=arrays["y"][:6])
    d = load_npz(path)
    assert d.classes == (-3, 5, 10)
    assert all(type(c) is int for c in d.classes)
    # x[:, 0] carries the original label, so the mapping is visible sample by sample.
    np.testing.assert_array_equal(np.asarray(d.classes)[d.y_train], d.x_train[:, 0])
    np.testing.assert_array_equal(np.asarray(d.classes)[d.y_test], d.x_test[:, 0])
    assert len(d.y_train) == 30  # given test arrays are used as they are, no split


@pytest.mark.parametrize("dtype", ["U", "S"], ids=["str", "utf-8 bytes"])
def test_npz_string_labels_are_kept_as_strings(tmp_path, dtype: str) -> None:
    names = np.array(["owl", "cat", "émeu" if dtype == "U" else "emu"])
    idx = np.resize(np.arange(3), 30)
    y = names[idx] if dtype == "U" else np.char.encode(names[idx], "utf-8")
    x = np.stack([idx.astype(np.float32), np.arange(30, dtype=np.float32)], axis=1)
    d = load_npz(_save(tmp_path, x=x, y=y, x_test=x[:6], y_test=y[:6]))
    assert d.classes == tuple(sorted(str(n) for n in names))
    assert all(type(c) is str for c in d.classes)
    assert d.y_train.dtype == np.int64
    rebuilt = np.asarray(d.classes)[d.y_train]
    np.testing.assert_array_equal(rebuilt, names[d.x_train[:, 0].astype(int)])


def test_npz_object_labels_are_refused_as_they_need_pickle(tmp_path) -> None:
    path = _save(tmp_path, x=np.ones((4, 2)), y=np.array(["a", "b", "a", "b"], dtype=object))
    with pytest.raises(DataError, match=r"key 'y' holds Python objects.*dtype=str"):
        load_npz(path)


def test_npz_through_load_dataset(tmp_path) -> None:
    path = _save(tmp_path, **_valid())
    d = load_dataset(f"npz:{path}", seed=2)
    assert d.name == f"npz:{path}"
    np.testing.assert_array_equal(d.x_train, load_npz(path, seed=2).x_train)


def test_uint8_images_are_scaled_and_get_a_channel_axis(tmp_path) -> None:
    x = np.full((8, 5, 6), 255, dtype=np.uint8)
    path = _save(tmp_path, x=x, y=np.array([0, 1] * 4))
    d = load_npz(path)
    assert d.input_shape == (1, 5, 6)
    assert d.x_train.dtype == np.float32 and d.x_train.max() == 1.0


def test_non_uint8_inputs_are_kept_as_they_are(tmp_path) -> None:
    x = np.full((8, 3), 200, dtype=np.int16)
    d = load_npz(_save(tmp_path, x=x, y=np.array([0, 1] * 4)))
    assert d.x_train.dtype == np.float32 and d.x_train.max() == 200.0


def test_a_class_with_one_sample_stays_in_training(tmp_path) -> None:
    y = np.array([0] * 8 + [1] * 8 + [2])
    d = load_npz(_save(tmp_path, x=np.ones((17, 2)), y=y))
    assert 2 in d.y_train and 2 not in d.y_test
    assert {0, 1} <= set(d.y_test)


def _truncated(tmp_path: Path) -> Path:
    good = _save(tmp_path, "good.npz", **_valid())
    path = tmp_path / "data.npz"
    path.write_bytes(good.read_bytes()[:-40])
    return path


def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "data.npz"
    path.write_text("x,y\n1,2\n")
    return path


def _npy(tmp_path: Path) -> Path:
    path = tmp_path / "data.npz"
    with path.open("wb") as f:  # np.save(path) would append ".npy" to the name
        np.save(f, np.ones(3))
    return path


NPZ_ERRORS = {
    "missing file": (lambda p: p / "data.npz", r"data\.npz: file not found"),
    "truncated": (_truncated, r"data\.npz: not a valid \.npz"),
    "text file": (_csv, r"data\.npz: not a valid \.npz"),
    "npy file": (_npy, r"data\.npz: holds a single array"),
    "missing x": (lambda p: _save(p, y=np.arange(4)), r"missing key 'x'"),
    "missing y": (lambda p: _save(p, x=np.ones((4, 2))), r"missing key 'y'"),
    "x_test alone": (
        lambda p: _save(p, **_valid(), x_test=np.ones((2, 2))),
        r"has key 'x_test' but not 'y_test'",
    ),
    "object x": (
        lambda p: _save(p, x=np.array([{}, {}], dtype=object), y=np.array([0, 1])),
        r"key 'x' holds Python objects",
    ),
    "string x": (
        lambda p: _save(p, x=np.array([["a"], ["b"]]), y=np.array([0, 1])),
        r"'x' has dtype <U1; it must hold numbers",
    ),
    "1-D x": (lambda p: _save(p, x=np.ones(4), y=np.arange(4)), r"'x' has shape \(4,\)"),
    "5-D x": (lambda p: _save(p, x=np.ones((4, 1, 1, 1, 1)), y=np.arange(4)), r"'x' has shape"),
    "NaN x": (
        lambda p: _save(p, x=np.array([[np.nan, 1], [np.inf, np.nan]]), y=np.array([0, 1])),
        r"'x' has 3 NaN or infinite values",
    ),
    "length mismatch": (
        lambda p: _save(p, x=np.ones((5, 2)), y=np.arange(4)),
        r"'x' has 5 samples but 'y' has 4 labels",
    ),
    "2-D y": (
        lambda p: _save(p, x=np.ones((4, 2)), y=np.zeros((4, 2), dtype=int)),
        r"'y' has shape \(4, 2\); labels must be 1-D",
    ),
    "float y": (
        lambda p: _save(p, x=np.ones((4, 2)), y=np.array([0.0, 1, 0, 1])),
        r"'y' has dtype float64.*y\.astype\('int64'\)",
    ),
    "bool y": (
        lambda p: _save(p, x=np.ones((4, 2)), y=np.array([True, False] * 2)),
        r"'y' has dtype bool.*y\.astype\('int64'\)",
    ),
    "empty": (
        lambda p: _save(p, x=np.ones((0, 2)), y=np.zeros(0, dtype=int)),
        r"'x' is empty",
    ),
    "one class": (
        lambda p: _save(p, x=np.ones((4, 2)), y=np.full(4, 7)),
        r"key 'y' has a single class \(7\)",
    ),
    "test shape": (
        lambda p: _save(p, **_valid(), x_test=np.ones((2, 3)), y_test=np.array([0, 1])),
        r"key 'x_test' has samples of shape \(3,\) but 'x' has \(2,\)",
    ),
    "unknown test label": (
        lambda p: _save(p, **_valid(), x_test=np.ones((2, 2)), y_test=np.array([0, 9])),
        r"key 'y_test' has labels not in 'y' \(9\)",
    ),
    "NaN x_test": (
        lambda p: _save(p, **_valid(), x_test=np.full((2, 2), np.nan), y_test=np.array([0, 1])),
        r"'x_test' has 4 NaN",
    ),
}


@pytest.mark.parametrize("case", list(NPZ_ERRORS))
def test_bad_npz_files_raise_data_error_naming_file_and_problem(tmp_path, case: str) -> None:
    make, pattern = NPZ_ERRORS[case]
    path = make(tmp_path)
    with pytest.raises(DataError, match=pattern) as info:
        load_npz(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


# ------------------------------------------------------------------------------ validation


def test_validate_arrays_converts_without_touching_the_inputs() -> None:
    x = np.arange(12, dtype=np.float64).reshape(2, 2, 3)
    y = np.array([5, -1], dtype=np.int32)
    x2, y2 = validate_arrays(x, y, what="learn()")
    assert x2.dtype == np.float32 and x2.shape == (2, 1, 2, 3)
    assert y2.dtype == np.int64 and list(y2) == [5, -1]  # checked, not remapped
    x2[:] = 0
    assert x.max() == 11.0  # the caller's array is not aliased


def test_validate_arrays_names_the_source_in_errors() -> None:
    with pytest.raises(DataError, match=r"^learn\(\): 'x' has 1 NaN"):
        validate_arrays(np.array([[np.nan]]), np.array([0]), what="learn()")


def test_hand_built_dataset_with_labels_out_of_range_is_refused() -> None:
    x = np.zeros((3, 2), dtype=np.float32)
    y = np.array([0, 1, 2])
    with pytest.raises(DataError, match="outside 0..1"):
        Dataset("toy", x, y, x, y, classes=(0, 1))
