"""The user's labels, kept end to end: any integers or strings, classes that appear later.

A :class:`LabelMap` turns the user's labels into contiguous output rows 0..K-1, in the order
the labels were first seen (or the order of a ``classes`` list given up front), and back.
The learner's loop, the replay buffers and the strategies work on rows; the learner's public
API (``learn_many``, ``learn_one``, ``predict_many``, ``predict_one``, ``evaluate``), the run
report, checkpoints and exported ONNX models speak the user's labels.

Labels are integers (Python or numpy, any value within int64) or strings (``str``, numpy
``U``, or UTF-8 ``bytes``); one learner takes one kind. Booleans, floats (NaN included),
``None`` and mixtures of kinds are refused with a DataError rather than guessed at: ``1.0``
or ``True`` as a class is almost always a bug upstream, and ``[1, "1"]`` would silently
become two strings in numpy.

This module needs numpy only (and onnx for :func:`read_onnx_labels`), not torch, so that a
device that runs an exported model can read its labels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from edgecl.errors import DataError, UsageError

Label = int | str
ONNX_LABELS_KEY = "edgecl.labels"  # metadata_props key: a JSON list, in output-column order
_INT64_MAX = np.iinfo(np.int64).max


def show(label: object) -> str:
    """A label as it reads in a message: 7, 'cat'."""
    return repr(label) if isinstance(label, str) else str(label)


def preview(labels: Sequence[Label], limit: int = 5) -> str:
    """The first ``limit`` labels for a message: 7, 107, 207 and 2 more."""
    shown = ", ".join(show(v) for v in labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def as_labels(y: object, *, name: str = "labels") -> np.ndarray:
    """``y`` as an int64 or str array of the same shape; DataError for any other kind.

    ``name`` starts each message (``"labels"``, ``"data.npz: 'y'"``). Lists are read element
    by element, so a mixture of kinds is refused instead of becoming strings.
    """
    if isinstance(y, np.ndarray):
        arr = y
    else:
        try:
            arr = np.asarray(y, dtype=object)
        except (ValueError, TypeError) as error:  # ragged nested lists
            raise DataError(f"{name} are not a rectangular array: {error}") from None
    if arr.dtype.kind == "O":
        arr = _from_objects(arr, name)
    kind = arr.dtype.kind
    if kind in "iu":
        if kind == "u" and arr.size and int(arr.max()) > _INT64_MAX:
            raise DataError(f"{name} has labels too large for int64; renumber them")
        return arr.astype(np.int64)
    if kind == "U":
        return arr
    if kind == "S":
        try:
            return np.char.decode(arr, "utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{name} holds bytes that are not UTF-8 text; save string labels "
                            "as a str array") from None
    hint = "; convert with y.astype('int64')" if kind in "bf" else ""
    nan = " (and NaN)" if kind == "f" and np.isnan(arr).any() else ""
    raise DataError(f"{name} has dtype {arr.dtype}{nan}; labels must be integers or "
                    f"strings{hint}")


def _from_objects(arr: np.ndarray, name: str) -> np.ndarray:
    items = arr.ravel().tolist()
    if not items:
        return np.zeros(arr.shape, dtype=np.int64)
    try:
        items = [v.decode("utf-8") if isinstance(v, bytes) else v for v in items]
    except UnicodeDecodeError:
        raise DataError(f"{name} holds bytes that are not UTF-8 text") from None
    if all(isinstance(v, str) for v in items):
        return np.array(items, dtype=str).reshape(arr.shape)
    ints = [isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
            for v in items]
    if all(ints):
        if any(not -_INT64_MAX - 1 <= int(v) <= _INT64_MAX for v in items):
            raise DataError(f"{name} has labels too large for int64; renumber them")
        return np.array([int(v) for v in items], dtype=np.int64).reshape(arr.shape)
    odd = next((v for v, ok in zip(items, ints, strict=True)
                if not ok and not isinstance(v, str)), None)
    if odd is None:
        why = "a mix of integers and strings"
    elif isinstance(odd, (bool, np.bool_)):
        why = f"booleans ({odd!r})"
    elif isinstance(odd, (float, np.floating)):
        why = f"floats ({odd!r})"
    else:
        why = f"{type(odd).__name__} values ({str(odd)[:40]!r})"
    raise DataError(f"{name} holds {why}; labels must all be integers or all strings")


class LabelMap:
    """The user's labels and the output row of each: ``labels[row]`` is the user's label.

    Immutable: :meth:`extended` returns a bigger map, so a learner can check a growth in
    full before it commits to it. ``fixed`` maps refuse new labels (a learner built with
    ``n_classes``).
    """

    def __init__(self, labels: Iterable[object] = (), *, fixed: bool = False) -> None:
        values = as_labels(list(labels), name="classes")
        if values.ndim != 1:
            raise DataError(f"classes must be a flat list of labels, got shape {values.shape}")
        unique, counts = np.unique(values, return_counts=True)
        if (counts > 1).any():
            raise DataError(f"classes lists {show(unique[counts > 1][0].item())} more than once")
        self.fixed = fixed
        self.labels: tuple[Label, ...] = tuple(v.item() for v in values)
        self.kind: str | None = None if not len(values) else ("str" if values.dtype.kind == "U"
                                                                else "int")
        self._array = values                     # labels in row order: decode by indexing
        self._order = np.argsort(values, kind="stable")
        self._sorted = values[self._order]       # encode by binary search

    @classmethod
    def identity(cls, n: int) -> LabelMap:
        """Labels 0..n-1, fixed: what ``Learner(n_classes=n)`` has always taken."""
        return cls(range(n), fixed=True)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"LabelMap([{preview(list(self.labels))}], fixed={self.fixed})"

    @property
    def is_identity(self) -> bool:
        return self.kind in (None, "int") and self.labels == tuple(range(len(self)))

    def check(self, y: object, *, n: int) -> np.ndarray:
        """``y`` as n labels of this map's kind (int64 or str array); DataError otherwise."""
        labels = as_labels(y)
        if labels.shape != (n,):
            raise DataError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        kind = "str" if labels.dtype.kind == "U" else "int"
        if self.kind is not None and n and kind != self.kind:
            raise DataError(f"labels are {'strings' if kind == 'str' else 'integers'}, but "
                            f"this learner's classes are "
                            f"{'strings' if self.kind == 'str' else 'integers'} "
                            f"({preview(list(self.labels), 3)})")
        return labels

    def rows(self, labels: np.ndarray) -> np.ndarray:
        """The output row of each label (int64), -1 for labels not in the map."""
        if not len(self) or not len(labels):
            return np.full(len(labels), -1, dtype=np.int64)
        if self.kind == "int" and self.is_identity and labels.dtype.kind == "i":
            return np.where((labels >= 0) & (labels < len(self)), labels, -1).astype(np.int64)
        at = np.searchsorted(self._sorted, labels).clip(max=len(self) - 1)
        found = self._sorted[at] == labels
        return np.where(found, self._order[at], -1).astype(np.int64)

    def unknown(self, labels: np.ndarray) -> list[Label]:
        """Labels not in the map, each once, in the order they first appear in ``labels``."""
        missing = labels[self.rows(labels) < 0]
        _, first = np.unique(missing, return_index=True)
        return [v.item() for v in missing[np.sort(first)]]

    def extended(self, new: Sequence[Label]) -> LabelMap:
        """A map with ``new`` labels appended as the next rows."""
        return LabelMap([*self.labels, *new], fixed=self.fixed)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """The user's labels of output rows: int64 for integer labels, str for strings."""
        return self._array[rows]

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "labels": list(self.labels)}

    @classmethod
    def from_json(cls, data: object, *, fixed: bool = False) -> LabelMap:
        """Inverse of :meth:`to_json`; DataError if ``data`` is not such a map."""
        if not isinstance(data, dict) or not isinstance(data.get("labels"), list):
            raise DataError("a label map must be a JSON object with a 'labels' list")
        labels = cls(data["labels"], fixed=fixed)
        if data.get("kind") != labels.kind:
            raise DataError(f"label map says kind {data.get('kind')!r}, its labels are "
                            f"{labels.kind!r}")
        return labels


def read_onnx_labels(path: str | os.PathLike[str]) -> list[Label]:
    """The class label of each output column of a model from ``edgecl export --part
    head|full``: its ``edgecl.labels`` metadata (a JSON list).

    Only onnx is needed. Without edgecl, ONNX Runtime gives the same text:
    ``json.loads(InferenceSession(path).get_modelmeta().custom_metadata_map["edgecl.labels"])``.
    """
    import onnx  # here, not at the top: reading labels is the only use of it in this module

    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise UsageError(f"ONNX model file not found: {path}") from None
    except Exception as error:
        raise UsageError(f"{path} is not a readable ONNX model ({type(error).__name__})"
                         ) from None
    props = {p.key: p.value for p in model.metadata_props}
    if ONNX_LABELS_KEY not in props:
        raise UsageError(f"{path} carries no {ONNX_LABELS_KEY} metadata: export the head or "
                         "the full model with 'edgecl export --part head|full' from a "
                         "checkpoint")
    try:
        labels = json.loads(props[ONNX_LABELS_KEY])
        LabelMap(labels)  # one kind, no duplicates
    except (json.JSONDecodeError, DataError) as error:
        raise UsageError(f"{path}: {ONNX_LABELS_KEY} metadata is not a list of labels "
                         f"({error})") from None
    return labels
