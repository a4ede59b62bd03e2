"""Hostile inputs (issue 6): generated bad data, files and checkpoints thrown at the public API.

The property, everywhere: a bad input raises an edgecl error (a subclass of ``EdgeclError``)
with a non-empty one-line message; never another exception type, never a hang, never a silent
acceptance. A learner that rejects a call is left exactly as it was: every tensor of its
``state_dict()`` is bitwise equal before and after (the stage timer's entries aside).

The defects this battery found are kept at the end as regression tests, each with one
concrete input.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import shutil
import signal
import string
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

from edgecl import Learner
from edgecl.data import load_dataset
from edgecl.errors import CheckpointError, EdgeclError, EdgeclWarning, ProfileError
from edgecl.profiles import load_profile
from edgecl.runtime.checkpoint import list_checkpoints
from edgecl.runtime.learner import LearnerConfig

D, K = 16, 4                 # input features and classes of every tiny learner here
CALL_SECONDS = 30.0          # a single call that takes longer than this counts as a hang
_SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow,
                                            HealthCheck.function_scoped_fixture])


# -- helpers --------------------------------------------------------------------------------
class Hang(BaseException):
    """Raised by the alarm inside a call that does not return: no ``except Exception``
    in the package can swallow it."""


@contextlib.contextmanager
def deadline(seconds: float = CALL_SECONDS) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise Hang(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_one_line(error: BaseException) -> str:
    message = str(error)
    assert message.strip(), f"{type(error).__name__} with an empty message"
    assert "\n" not in message and "\r" not in message, message
    return message


def snapshot(learner: Learner) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """The learner's state, bit for bit (NaN payloads and -0.0 included), timer aside."""
    out = {}
    for key, t in learner.state_dict().items():
        if key.startswith("timer."):
            continue
        t = t.detach().contiguous().cpu()
        out[key] = (str(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return out


def assert_same_state(after: dict, before: dict) -> None:
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"state changed: {changed[:8]}"


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` under the hang alarm, with edgecl's own warnings muted (a pq
    codec fitted on a few latents warns; that is not what these tests look at)."""
    with deadline(), warnings.catch_warnings():
        warnings.simplefilter("ignore", EdgeclWarning)
        return fn(*args, **kwargs)


def rejects(learner: Learner, method: str, *args: Any, **kwargs: Any) -> EdgeclError:
    """``learner.method(*args)`` must raise an EdgeclError and leave the learner unchanged."""
    before = snapshot(learner)
    try:
        call(getattr(learner, method), *args, **kwargs)
    except EdgeclError as error:
        caught = error
    else:
        pytest.fail(f"{method} accepted bad input")
    assert_one_line(caught)
    assert_same_state(snapshot(learner), before)
    return caught


def batch(n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, D)).astype(np.float32), np.arange(n) % K


def tiny(strategy: str = "latent-replay", *, trained: bool = True, **config: Any) -> Learner:
    learner = Learner(strategy=strategy, input_shape=(D,), n_classes=K, seed=0,
                      config=LearnerConfig(pretrain_epochs=2, epochs=1, replay_samples=20,
                                           **config))
    if trained:
        call(learner.learn_many, *batch(64))
    return learner


@pytest.fixture(scope="module")
def learners() -> dict[str, Learner]:
    # Shared by every example: a rejected call leaves a learner as it was, so any example
    # that changes one fails on the spot, before the next example could be misled by it.
    return {
        "latent-replay": tiny("latent-replay"),
        "ar1*": tiny("ar1*"),
        "latent-replay/pq": tiny("latent-replay", codec="pq"),   # quantized evaluation
        "untrained": tiny("latent-replay", codec="uint8", trained=False),
        "scheduled": tiny("latent-replay", update_budget_ms=20.0),  # the update scheduler on
    }


LEARNER_NAMES = ["latent-replay", "ar1*", "latent-replay/pq", "untrained", "scheduled"]


# -- generated bad arrays -------------------------------------------------------------------
FLOATS = [np.float16, np.float32, np.float64]
NON_NUMERIC = ["object", "str", "bytes", "complex64", "complex128", "datetime64[s]",
               "timedelta64[ms]", "void"]


def _values(seed: int, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _non_numeric(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "object":
        return values.astype(object)
    if kind == "str":
        return values.astype(str)
    if kind == "bytes":
        return values.astype(bytes)
    if kind == "void":
        return np.zeros(values.shape, dtype=[("a", "f4"), ("b", "i4")])
    if kind.startswith(("datetime64", "timedelta64")):
        return (values * 100).astype(np.int64).astype(kind)
    return values.astype(kind)


@st.composite
def bad_x(draw: st.DrawFn, lead: tuple[int, ...]) -> tuple[str, Any]:
    """(defect, inputs): ``lead + (D,)`` inputs with one defect; ``lead`` is ``(n,)`` for a
    batch and ``()`` for one sample."""
    seed = draw(st.integers(0, 2**16))
    defect = draw(st.sampled_from(["nonfinite", "shape", "dtype", "not an array"]
                                  + (["empty"] if lead else [])))
    if defect == "nonfinite":
        x = _values(seed, (*lead, D), draw(st.sampled_from(FLOATS)))
        flat = x.reshape(-1)
        where = draw(st.lists(st.integers(0, flat.size - 1), min_size=1, max_size=5))
        flat[where] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return defect, x
    if defect == "shape":
        sample = draw(st.sampled_from([(), (1, D), (D, 1), (4, 4), (2, D // 2)])
                      | st.integers(1, 3 * D).filter(lambda d: d != D).map(lambda d: (d,)))
        return defect, _values(seed, (*lead, *sample))
    if defect == "dtype":
        return defect, _non_numeric(_values(seed, (*lead, D)), draw(st.sampled_from(NON_NUMERIC)))
    if defect == "empty":
        return defect, np.zeros(draw(st.sampled_from([(0, D), (0,), (0, 0), (0, D, 1)])),
                                dtype=draw(st.sampled_from(FLOATS)))
    return defect, draw(st.sampled_from([None, "x", b"\x00", {"x": 1.0}, object()]))


@st.composite
def bad_y(draw: st.DrawFn, n: int) -> tuple[str, Any]:
    """(defect, labels) for a batch of ``n`` samples, one defect."""
    y = np.arange(n) % K
    defect = draw(st.sampled_from(["float", "bool", "non-numeric", "out of range", "shape",
                                   "not an array"]))
    if defect == "float":
        y = y.astype(draw(st.sampled_from(FLOATS)))
        return defect, y + draw(st.sampled_from([0.0, 0.5]))   # integral values too
    if defect == "bool":
        return defect, y.astype(bool)
    if defect == "non-numeric":
        return defect, _non_numeric(y.astype(np.float64), draw(st.sampled_from(NON_NUMERIC)))
    if defect == "out of range":
        big = draw(st.integers(K, 2**62) | st.integers(-(2**62), -1))
        y = y.astype(np.int64)
        y[draw(st.integers(0, n - 1))] = big
        if big > 0 and draw(st.booleans()):
            y = y.astype(np.uint64)
        return defect, y
    if defect == "shape":
        extra = draw(st.integers(1, 4))
        return defect, draw(st.sampled_from([y[:, None], y[None], np.int64(1),
                                             y[: n - min(n, extra)],
                                             np.concatenate([y, y[:1].repeat(extra)])]))
    return defect, draw(st.sampled_from([None, "0", 1.5, {"y": 0}]))


@st.composite
def bad_label(draw: st.DrawFn) -> Any:
    """One bad label for ``learn_one``."""
    return draw(st.sampled_from([1.0, np.float32(2), 0.5, True, np.bool_(False), "1", b"1",
                                 None, [0, 1], [[0]], 1 + 0j, {"y": 1}, np.array([[1]])])
                | st.integers(K, 2**70) | st.integers(-(2**70), -1))


# -- the learner's public API ---------------------------------------------------------------
@_SETTINGS
@given(data=st.data(), name=st.sampled_from(LEARNER_NAMES), n=st.integers(1, 12),
       side=st.sampled_from(["x", "y", "both"]))
def test_learn_many_rejects_bad_batches_and_changes_nothing(learners, data, name, n, side):
    learner = learners[name]
    x, y = batch(n, seed=n)
    if side in ("x", "both"):
        defect, x = data.draw(bad_x((n,)), label="x")
        event(f"x: {defect}")
    if side in ("y", "both"):
        defect, y = data.draw(bad_y(n), label="y")
        event(f"y: {defect}")
    rejects(learner, "learn_many", x, y)


@_SETTINGS
@given(data=st.data(), name=st.sampled_from(LEARNER_NAMES), side=st.sampled_from(["x", "y"]))
def test_learn_one_rejects_bad_samples_and_changes_nothing(learners, data, name, side):
    x, y = batch(1)[0][0], 1
    if side == "x":
        _, x = data.draw(bad_x(()), label="x")
    else:
        y = data.draw(bad_label(), label="y")
    rejects(learners[name], "learn_one", x, y)


@_SETTINGS
@given(data=st.data(), name=st.sampled_from(LEARNER_NAMES), n=st.integers(1, 12),
       one=st.booleans())
def test_predict_rejects_bad_inputs_and_changes_nothing(learners, data, name, n, one):
    if one:
        _, x = data.draw(bad_x(()), label="x")
        rejects(learners[name], "predict_one", x)
    else:
        _, x = data.draw(bad_x((n,)), label="x")
        rejects(learners[name], "predict_many", x)


@_SETTINGS
@given(data=st.data(), name=st.sampled_from(LEARNER_NAMES), n=st.integers(1, 12))
def test_evaluate_rejects_bad_inputs_and_changes_nothing(learners, data, name, n):
    defect, x = data.draw(bad_x((n,)), label="x")
    y = np.arange(len(x) if isinstance(x, np.ndarray) and x.ndim else n) % K
    if defect == "empty" and len(y) == 0:
        return  # an empty test set has accuracy NaN, by design (an experience without tests)
    rejects(learners[name], "evaluate", x, y)


@_SETTINGS
@given(name=st.sampled_from(LEARNER_NAMES), epochs=st.integers(-(2**40), 0))
def test_learn_many_rejects_epochs_below_one(learners, name, epochs):
    rejects(learners[name], "learn_many", *batch(4), epochs=epochs)


@_SETTINGS
@given(name=st.sampled_from(LEARNER_NAMES),
       budget=st.floats(max_value=-1e-9) | st.sampled_from([math.nan, math.inf, -math.inf]))
def test_sleep_refuses_a_budget_that_is_no_time(learners, name, budget):
    rejects(learners[name], "sleep", budget)  # checked even without a scheduler


def test_valid_calls_still_work_after_all_that(learners):
    """The battery above must not have left a learner unusable (a lock, a broken mode)."""
    x, y = batch(16, seed=99)
    for learner in learners.values():
        call(learner.learn_many, x, y)
        call(learner.learn_one, x[0], int(y[0]))
        assert call(learner.predict_many, x).shape == (16,)
        assert 0.0 <= call(learner.evaluate, x, y) <= 1.0


# -- constructor arguments ------------------------------------------------------------------
@_SETTINGS
@given(change=st.one_of(
    st.integers(-(2**40), 1).map(lambda n: {"n_classes": n}),
    st.text(max_size=12).filter(lambda t: t.strip().lower() not in {"naive", "cumulative",
                                                            "latent-replay", "cwr", "cwr*",
                                                            "ar1*", "remind", "exstream"})
    .map(lambda t: {"strategy": t}),
    st.text(max_size=8).filter(lambda t: t not in {"torch", "ort", "ort-int8"})
    .map(lambda t: {"backend": t}),
    st.sampled_from(["nope", "fc9", "", 99, -99]).map(lambda layer: {"latent_layer": layer}),
))
def test_a_learner_with_impossible_arguments_is_refused(change):
    kwargs = {"strategy": "latent-replay", "input_shape": (D,), "n_classes": K} | change
    with pytest.raises(EdgeclError) as info:
        call(Learner, **kwargs)
    assert_one_line(info.value)


# -- budgets --------------------------------------------------------------------------------
@_SETTINGS
@given(limit=st.sampled_from(["replay_bytes", "memory_bytes"]),
       nbytes=st.integers(-(2**20), 300),
       strategy=st.sampled_from(["latent-replay", "ar1*"]),
       codec=st.sampled_from(["fp32", "fp16", "uint8", "pq"]))
def test_a_budget_that_cannot_hold_one_latent_is_refused_at_construction(limit, nbytes,
                                                                         strategy, codec):
    # 256-value latents: even one uint8 code with its label takes more than 300 bytes.
    with pytest.raises(EdgeclError) as info:
        call(Learner, strategy=strategy, input_shape=(D,), n_classes=K,
             config=LearnerConfig(pretrain_epochs=1, replay_samples=None, codec=codec,
                                  **{limit: nbytes}))
    assert_one_line(info.value)


# -- the npz loader -------------------------------------------------------------------------
NPZ_DTYPES = ["float16", "float32", "float64", "int8", "int64", "uint8", "uint64", "bool",
              "complex64", "U2", "S2", "object", "datetime64[s]"]


@st.composite
def npz_array(draw: st.DrawFn, n: int) -> np.ndarray:
    dtype = draw(st.sampled_from(NPZ_DTYPES))
    shape = draw(st.sampled_from([(n,), (n, 3), (n, 2, 2), (n, 1, 2, 2), (), (n, 0),
                                  (n, 1, 1, 1, 1), (n + 1, 3), (0, 3)]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if dtype.startswith(("int", "uint")):
        values = rng.integers(0, 3, size=shape)
        if draw(st.booleans()):
            values = values * draw(st.sampled_from([-1, 7, 2**40]))
        if dtype == "uint64" and draw(st.booleans()):
            values = np.abs(values).astype(np.uint64) + np.uint64(2**63)  # beyond int64
        return np.abs(values).astype(dtype) if dtype.startswith("uint") else values.astype(dtype)
    values = rng.normal(size=shape) * draw(st.sampled_from([1.0, 1e5, 1e40]))
    if values.size and draw(st.booleans()):
        values.reshape(-1)[draw(st.integers(0, values.size - 1))] = draw(
            st.sampled_from([np.nan, np.inf, 0.0]))
    with np.errstate(all="ignore"):
        return _non_numeric(values, dtype) if dtype in NON_NUMERIC or dtype[0] in "USd" \
            else values.astype(dtype)


def npz_expected_ok(arrays: dict[str, np.ndarray]) -> bool:
    """What the README promises to accept: numeric x of (N, D), (N, H, W) or (N, C, H, W)
    with N > 0, finite as float32; integer labels y of (N,) with at least two classes; and
    x_test, y_test both or neither, alike, with no class missing from y."""

    def pair_ok(x: np.ndarray, y: np.ndarray) -> bool:
        if x.dtype.kind not in "biuf" or x.ndim not in (2, 3, 4) or x.size == 0:
            return False
        if y.ndim != 1 or y.dtype.kind not in "iu" or len(x) != len(y):
            return False
        if y.dtype.kind == "u" and len(y) and y.max() > np.iinfo(np.int64).max:
            return False
        with np.errstate(all="ignore"):
            return bool(np.isfinite(x.astype(np.float32)).all())

    if "x" not in arrays or "y" not in arrays or not pair_ok(arrays["x"], arrays["y"]):
        return False
    if len(np.unique(arrays["y"])) < 2:
        return False
    has = {"x_test", "y_test"} & arrays.keys()
    if not has:
        return True
    if len(has) == 1 or not pair_ok(arrays["x_test"], arrays["y_test"]):
        return False
    return (arrays["x_test"].shape[1:] == arrays["x"].shape[1:]
            and bool(np.isin(arrays["y_test"], arrays["y"]).all()))


def assert_dataset_is_sound(dataset: Any) -> None:
    for x, y in ((dataset.x_train, dataset.y_train), (dataset.x_test, dataset.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int64 and len(x) == len(y)
        assert np.isfinite(x).all()
        assert ((y >= 0) & (y < dataset.n_classes)).all()
    assert dataset.n_classes >= 2 and len(dataset.y_train) > 0


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(1, 6),
       keys=st.lists(st.sampled_from(["x", "y", "x_test", "y_test", "z", "X", "y "]),
                     min_size=1, max_size=5, unique=True))
def test_npz_loader_accepts_exactly_what_the_readme_promises(tmp_path, data, n, keys):
    arrays = {key: data.draw(npz_array(n), label=key) for key in keys}
    # Start often from a good file, so that the finer checks are reached, not only the
    # first ones; then perhaps swap one array for a generated one.
    start = data.draw(st.sampled_from(["generated", "good x, y", "good x, y, tests"]))
    if start != "generated":
        arrays["x"], arrays["y"] = _values(n, (3 * n, 2, 2)), np.arange(3 * n) % 3
    if start == "good x, y, tests":
        arrays["x_test"], arrays["y_test"] = _values(n + 1, (n, 2, 2)), np.arange(n) % 3
    if data.draw(st.booleans(), label="swap one"):
        key = data.draw(st.sampled_from(sorted(arrays)), label="swapped")
        arrays[key] = data.draw(npz_array(n), label="new array")
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)  # object arrays are pickled into the file
    expected = npz_expected_ok(arrays)
    try:
        dataset = call(load_dataset, f"npz:{path}")
    except EdgeclError as error:
        assert not expected, f"refused a valid file: {error}"
        assert str(path) in assert_one_line(error)
        event("refused")
        return
    event("accepted")
    assert expected, f"accepted {({k: (v.dtype, v.shape) for k, v in arrays.items()})}"
    assert_dataset_is_sound(dataset)


@pytest.fixture(scope="module")
def good_npz(tmp_path_factory) -> dict[str, tuple[bytes, Any]]:
    """A valid file as np.savez and np.savez_compressed write it, and what it loads as."""
    out = {}
    for name, save in (("stored", np.savez), ("compressed", np.savez_compressed)):
        path = tmp_path_factory.mktemp("npz") / f"{name}.npz"
        x, _ = batch(24)
        save(path, x=x, y=np.arange(24) % 3, x_test=x[:6], y_test=np.arange(6) % 3)
        out[name] = (path.read_bytes(), load_dataset(f"npz:{path}"))
    return out


def _same_dataset(a: Any, b: Any) -> bool:
    return (a.classes == b.classes and all(np.array_equal(getattr(a, k), getattr(b, k))
                                           for k in ("x_train", "y_train", "x_test", "y_test")))


def _zip_error_still_open(error: Exception) -> bool:
    """Damage that zipfile and zlib report as NotImplementedError, RuntimeError or
    zlib.error, which the loader lets through; see test_damaged_npz_open_bug. Those examples
    are set aside until it is fixed."""
    return isinstance(error, (NotImplementedError, RuntimeError, zlib.error))


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), how=st.sampled_from(["truncate", "flip", "random bytes"]),
       variant=st.sampled_from(["stored", "compressed"]))
def test_a_damaged_npz_is_refused_or_reads_back_identical(tmp_path, good_npz, data, how,
                                                          variant):
    good, reference = good_npz[variant]
    if how == "truncate":
        blob = good[: data.draw(st.integers(0, len(good) - 1), label="length")]
    elif how == "flip":
        blob = bytearray(good)
        blob[data.draw(st.integers(0, len(good) - 1), label="byte")] ^= 1 << data.draw(
            st.integers(0, 7), label="bit")
        blob = bytes(blob)
    else:
        blob = data.draw(st.binary(max_size=2000), label="bytes")
    path = tmp_path / "data.npz"
    path.write_bytes(blob)
    try:
        dataset = call(load_dataset, f"npz:{path}")
    except EdgeclError as error:
        assert str(path) in assert_one_line(error)
        event("refused")
        return
    except Exception as error:
        if _zip_error_still_open(error):
            reject()
        raise
    # A flip in a zip field nobody reads (a timestamp) is harmless; any other must be caught.
    assert _same_dataset(dataset, reference)
    event("read back identical")


# -- profiles -------------------------------------------------------------------------------
PROFILE = {
    "name": "board", "description": "a test board",
    "device": {"cores": 4, "ram_mb": 2048, "sustained_gflops": 10.5,
               "memory_bandwidth_gbs": 12.8, "torch_device": "cpu",
               "execution_providers": ["CPUExecutionProvider"], "precision": "fp32",
               "threads": 4},
    "budget": {"memory_mb": 256, "replay_mb": 8, "update_ms": 50, "replay_codec": "uint8"},
}
INTEGER_KEYS = {("device", "cores"), ("device", "ram_mb"), ("device", "threads")}
NUMBER_KEYS = {("device", "sustained_gflops"), ("device", "memory_bandwidth_gbs"),
               ("budget", "memory_mb"), ("budget", "replay_mb"), ("budget", "update_ms")}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan" if value != value
                                                       else repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def toml(doc: dict[str, Any]) -> str:
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict)]
    for section, table in doc.items():
        if isinstance(table, dict):
            lines += [f"[{section}]"] + [f"{json.dumps(k)} = {toml_value(v)}"
                                         for k, v in table.items()]
    return "\n".join(lines) + "\n"


# Plausible values twice over (one_of picks a branch uniformly), so that about half the
# profiles are consistent and the contradictions between keys get tested, not only types.
_plausible = st.integers(1, 5000) | st.floats(0.5, 5000.0)
numbers = (_plausible | _plausible | _plausible | st.integers(-10, 0) | st.integers(2**62, 2**64)
           | st.floats(allow_nan=True, allow_infinity=True, width=64)
           | st.sampled_from([True, False, "4", [4]]))


def profile_expected_ok(doc: dict[str, Any]) -> bool:
    """The profile contract: every number positive and finite (whole for cores, ram_mb,
    threads, at most 2**63 - 1), threads <= cores, replay_mb <= memory_mb <= ram_mb."""
    for section, key in INTEGER_KEYS | NUMBER_KEYS:
        value = doc[section][key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if (section, key) in INTEGER_KEYS and not isinstance(value, int):
            return False
        if isinstance(value, int) and value > 2**63 - 1:
            return False
        if not (math.isfinite(value) and value > 0):
            return False
    device, budget = doc["device"], doc["budget"]
    return (device["threads"] <= device["cores"]
            and budget["replay_mb"] <= budget["memory_mb"] <= device["ram_mb"])


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), changed=st.lists(st.sampled_from(sorted(INTEGER_KEYS | NUMBER_KEYS)),
                                        min_size=1, max_size=4, unique=True))
def test_profile_numbers_and_budgets_accept_exactly_the_consistent_ones(tmp_path, data,
                                                                         changed):
    doc = copy.deepcopy(PROFILE)
    for section, key in changed:
        doc[section][key] = data.draw(numbers, label=f"{section}.{key}")
    path = tmp_path / "board.toml"
    path.write_text(toml(doc))
    expected = profile_expected_ok(doc)
    try:
        profile = call(load_profile, path)
    except ProfileError as error:
        assert not expected, f"refused a consistent profile: {error}"
        message = assert_one_line(error)
        assert any(key in message for _, key in changed), message
        event("refused")
        return
    event("accepted")
    assert expected, f"accepted {doc}"
    for section, key in changed:
        assert getattr(getattr(profile, section), key) == doc[section][key]


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(deleted=st.lists(st.sampled_from([(None, "name"), (None, "description"), (None, "device"),
                                         (None, "budget"), *sorted(INTEGER_KEYS | NUMBER_KEYS),
                                         ("device", "torch_device"), ("budget", "replay_codec"),
                                         ("device", "execution_providers")]),
                        max_size=2, unique=True),
       added=st.lists(st.tuples(st.sampled_from([None, "device", "budget"]),
                                st.text(string.ascii_letters + "_", min_size=1, max_size=10)),
                      max_size=2, unique=True))
def test_profile_with_missing_or_unknown_keys_names_one_of_them(tmp_path, deleted, added):
    doc = copy.deepcopy(PROFILE)
    for section, key in deleted:
        (doc if section is None else doc.get(section, {})).pop(key, None)
    known = {k for k in PROFILE} | {k for t in ("device", "budget") for k in PROFILE[t]}
    unknown = [(s, k) for s, k in added if k not in known and k != "alias"]
    for section, key in unknown:
        table = doc if section is None else doc.get(section)
        if isinstance(table, dict):
            table[key] = 1
    path = tmp_path / "board.toml"
    path.write_text(toml(doc))
    with pytest.raises(ProfileError) if deleted or unknown else contextlib.nullcontext():
        try:
            call(load_profile, path)
        except ProfileError as error:
            message = assert_one_line(error)
            names = [k for _, k in deleted] + [k for _, k in unknown]
            assert any(name in message for name in names), message
            raise


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=400)
       | st.builds(lambda b, i: toml(PROFILE).encode()[:i] + b, st.binary(max_size=8),
                   st.integers(0, 600)))
def test_profile_file_of_random_or_cut_bytes_is_a_profile_error(tmp_path, blob):
    path = tmp_path / "board.toml"
    path.write_bytes(blob)
    try:
        profile = call(load_profile, path)
    except ProfileError as error:
        assert_one_line(error)
        return
    # Every key is required and the last one ends the file, so only the whole profile (with,
    # at most, a harmless tail such as a comment) may load, and then as it was written.
    for section in ("device", "budget"):
        for key, value in PROFILE[section].items():
            got = getattr(getattr(profile, section), key)
            assert (list(got) if isinstance(got, tuple) else got) == value, (section, key)


# -- checkpoints ----------------------------------------------------------------------------
class CheckpointSource:
    """A learner with two checkpoints on disk (steps 1 and 2) and a third, newer state in
    memory; the states are kept to compare against what a load leaves behind."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.learner = tiny("latent-replay")
        call(self.learner.learn_many, *batch(16, seed=1))
        self.learner.save_checkpoint(directory, step=1)
        self.older = snapshot(self.learner)
        call(self.learner.learn_many, *batch(16, seed=2))
        self.learner.save_checkpoint(directory, step=2)
        self.newest = snapshot(self.learner)
        call(self.learner.learn_many, *batch(16, seed=3))
        self.current = self.learner.state_dict()
        self.current_snapshot = snapshot(self.learner)
        self.files = {(step, name): (directory / f"step-{step:09d}" / name).read_bytes()
                      for step in (1, 2) for name in ("manifest.json", "tensors.pt")}

    def reset(self) -> None:
        if snapshot(self.learner) != self.current_snapshot:
            self.learner.load_state_dict(self.current)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> CheckpointSource:
    return CheckpointSource(tmp_path_factory.mktemp("source") / "ck")


_STAMP_KEYS = {"created", "edgecl_version", "torch_version", "manifest_sha256"}


def _reseal(manifest: dict[str, Any]) -> dict[str, Any]:
    """Recompute manifest_sha256 as docs/checkpoint-format.md says: a deliberate edit."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return {**body, "manifest_sha256": hashlib.sha256(text.encode("ascii")).hexdigest()}


def _manifest_edit(draw: st.DrawFn, manifest: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(manifest)
    paths = [(k,) for k in out] + [("meta", k) for k in out["meta"]] + \
            [("tensors", k, f) for k in list(out["tensors"])[:6] for f in ("dtype", "shape")] + \
            [("files", "tensors.pt", f) for f in ("sha256", "bytes")]
    where = draw(st.sampled_from(paths), label="key")
    parent = out
    for key in where[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["set", "delete", "add"]), label="edit")
    if action == "delete":
        parent.pop(where[-1])
    elif action == "add":
        parent[where[-1] + "_extra"] = 1
    else:
        parent[where[-1]] = draw(st.none() | st.booleans() | st.integers(-3, 2**40)
                                 | st.text(max_size=6) | st.lists(st.integers(0, 300), max_size=3)
                                 | st.sampled_from([2, "float64", "int8", [4, 4], "ar1*", "mlp"]),
                                 label="value")
    return out


@st.composite
def damage_plan(draw: st.DrawFn, source: CheckpointSource) -> list[tuple]:
    ops = []
    for _ in range(draw(st.integers(1, 3), label="n ops")):
        step = draw(st.sampled_from([1, 2]), label="step")
        name = draw(st.sampled_from(["manifest.json", "tensors.pt"]), label="file")
        size = len(source.files[step, name])
        kind = draw(st.sampled_from(["truncate", "flip", "delete file", "delete checkpoint",
                                     "edit manifest", "fake newer"]), label="damage")
        if kind == "truncate":
            ops.append((kind, step, name, draw(st.integers(0, size - 1), label="length")))
        elif kind == "flip":
            ops.append((kind, step, name, draw(st.integers(0, size - 1), label="byte"),
                        draw(st.integers(0, 7), label="bit")))
        elif kind in ("delete file", "delete checkpoint"):
            ops.append((kind, step, name))
        elif kind == "edit manifest":
            manifest = json.loads(source.files[step, "manifest.json"])
            edited = _manifest_edit(draw, manifest)
            ops.append((kind, step, edited, draw(st.booleans(), label="reseal")))
        else:
            ops.append((kind, step, draw(st.integers(3, 12), label="new step")))
    return ops


def _apply(directory: Path, op: tuple) -> None:
    kind, step = op[0], op[1]
    folder = directory / f"step-{step:09d}"
    if not folder.is_dir():
        return
    if kind == "truncate":
        with contextlib.suppress(FileNotFoundError):
            path = folder / op[2]
            path.write_bytes(path.read_bytes()[: op[3]])
    elif kind == "flip":
        with contextlib.suppress(FileNotFoundError):
            path = folder / op[2]
            blob = bytearray(path.read_bytes())
            if op[3] < len(blob):
                blob[op[3]] ^= 1 << op[4]
                path.write_bytes(bytes(blob))
    elif kind == "delete file":
        (folder / op[2]).unlink(missing_ok=True)
    elif kind == "delete checkpoint":
        shutil.rmtree(folder)
    elif kind == "edit manifest":
        manifest = _reseal(op[2]) if op[3] else op[2]
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    else:  # a copy of this checkpoint under a newer step: its manifest names the old step
        shutil.copytree(folder, directory / f"step-{op[2]:09d}", dirs_exist_ok=True)


def _intact(directory: Path, source: CheckpointSource, step: int) -> bool:
    """Whether checkpoint ``step`` still says what it said when it was written: the same
    payload bytes, and a sealed manifest equal but for the text of stamps nobody checks."""
    folder = directory / f"step-{step:09d}"
    try:
        payload = (folder / "tensors.pt").read_bytes()
        manifest = json.loads((folder / "manifest.json").read_bytes())
    except (OSError, ValueError):
        return False
    original = json.loads(source.files[step, "manifest.json"])
    if payload != source.files[step, "tensors.pt"] or not isinstance(manifest, dict):
        return False
    if _reseal(manifest) != manifest or manifest.keys() != original.keys():
        return False  # an unsealed edit, or a key the format requires gone
    if not all(isinstance(manifest[k], str) for k in _STAMP_KEYS):
        return False
    strip = lambda m: {k: v for k, v in m.items() if k not in _STAMP_KEYS}  # noqa: E731
    return strip(manifest) == strip(original)


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_checkpoints_load_the_newest_intact_one_or_fail_cleanly(tmp_path_factory,
                                                                        source, data):
    directory = tmp_path_factory.mktemp("damaged") / "ck"
    shutil.copytree(source.directory, directory)
    plan = data.draw(damage_plan(source), label="plan")
    for op in plan:
        _apply(directory, op)
    newest_intact = next((step for step in (2, 1) if _intact(directory, source, step)), None)
    learner = source.learner
    try:
        try:
            checkpoint = call(learner.load_checkpoint, directory)
        except CheckpointError as error:
            assert_one_line(error)
            assert_same_state(snapshot(learner), source.current_snapshot)
            event(f"refused; newest intact: {newest_intact}")
            # An intact newest checkpoint always loads; an older one may be shadowed by a
            # newer one that is no damage but an error (another run's, a newer format).
            assert newest_intact != 2, f"the intact newest checkpoint was refused: {error}"
            return
        # What loads is a checkpoint as written, but for sealed edits that change nothing
        # the loader relies on (an extra meta key, a stamp); never one past an intact newer.
        step = checkpoint.step
        assert step in (1, 2), f"loaded step {step}, which was never written"
        assert newest_intact is None or step >= newest_intact, "skipped an intact checkpoint"
        folder = directory / f"step-{step:09d}"
        assert (folder / "tensors.pt").read_bytes() == source.files[step, "tensors.pt"]
        manifest = json.loads((folder / "manifest.json").read_bytes())
        assert _reseal(manifest) == manifest, "loaded a manifest edited without its digest"
        assert_same_state(snapshot(learner), source.newest if step == 2 else source.older)
        event(f"loaded step {step}" + (" (edited)" if step != newest_intact else ""))
    finally:
        source.reset()


OTHER_LEARNERS = {
    "classes": {"n_classes": 5},
    "input shape": {"input_shape": (12,)},
    "strategy": {"strategy": "ar1*"},
    "codec": {"config": LearnerConfig(pretrain_epochs=2, epochs=1, replay_samples=20,
                                      codec="uint8")},
    "seed": {"seed": 1},
}


@pytest.mark.parametrize("other, forged", [
    *[(OTHER_LEARNERS[k], False) for k in OTHER_LEARNERS],
    # With the identity forged (and the manifest resealed), only the tensors can tell; a
    # checkpoint of another seed has tensors of the very same shapes, and loads, by design.
    *[(OTHER_LEARNERS[k], True) for k in OTHER_LEARNERS if k != "seed"],
], ids=[*OTHER_LEARNERS, *[f"{k}, identity forged" for k in OTHER_LEARNERS if k != "seed"]])
def test_a_checkpoint_of_another_learner_is_refused_without_change(tmp_path, source, other,
                                                                   forged):
    kwargs = {"strategy": "latent-replay", "input_shape": (D,), "n_classes": K, "seed": 0,
              "config": LearnerConfig(pretrain_epochs=2, epochs=1, replay_samples=20)} | other
    foreign = Learner(**kwargs)
    x, _ = batch(32)
    call(foreign.learn_many, np.zeros((32, *kwargs["input_shape"]), np.float32) + x[:, :1],
         np.arange(32) % kwargs["n_classes"])
    path = foreign.save_checkpoint(tmp_path / "ck")
    if forged:  # someone wrote this learner's identity over the other's, and resealed it
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["meta"].update(json.loads(json.dumps(source.learner.identity())))
        (path / "manifest.json").write_text(json.dumps(_reseal(manifest)))
    try:
        error = rejects(source.learner, "load_checkpoint", tmp_path / "ck")
    finally:
        source.reset()
    if not forged:
        assert next(iter(other)) in str(error)


def test_a_checkpoint_of_a_newer_format_is_refused_without_change(tmp_path, source):
    shutil.copytree(source.directory, tmp_path / "ck")
    folder = tmp_path / "ck" / "step-000000002"
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(_reseal({**manifest, "format_version": 2})))
    try:
        error = rejects(source.learner, "load_checkpoint", tmp_path / "ck")
    finally:
        source.reset()
    assert "upgrade edgecl" in str(error)


@pytest.fixture(scope="module")
def ort_checkpoint(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    directory = tmp_path_factory.mktemp("ort") / "ck"
    kwargs = {"strategy": "latent-replay", "input_shape": (D,), "n_classes": K, "seed": 0,
              "backend": "ort", "backend_threads": 1, "onnx_dir": directory / "backbone",
              "config": LearnerConfig(pretrain_epochs=2, epochs=1, replay_samples=20)}
    learner = Learner(**kwargs)
    call(learner.learn_many, *batch(32))
    learner.save_checkpoint(directory)
    return directory, kwargs


def _damaged(content: bytes, data: st.DataObject, how: str) -> bytearray:
    """``content`` cut short at a drawn length ("truncate") or with one drawn bit flipped."""
    blob = bytearray(content)
    if how == "truncate":
        return blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    blob[data.draw(st.integers(0, len(blob) - 1), label="byte")] ^= 1 << data.draw(
        st.integers(0, 7), label="bit")
    return blob


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), how=st.sampled_from(["truncate", "flip"]))
def test_a_damaged_onnx_backbone_next_to_a_checkpoint_is_refused(tmp_path_factory,
                                                                ort_checkpoint, data, how):
    original, kwargs = ort_checkpoint
    directory = tmp_path_factory.mktemp("ort-damaged") / "ck"
    shutil.copytree(original, directory)
    (onnx_file,) = (directory / "backbone").glob("*.onnx")
    blob = _damaged(onnx_file.read_bytes(), data, how)
    onnx_file.write_bytes(bytes(blob))
    learner = call(Learner, **(kwargs | {"onnx_dir": directory / "backbone"}))
    error = rejects(learner, "load_checkpoint", directory)
    assert "SHA-256" in str(error)


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), how=st.sampled_from(["truncate", "flip"]))
def test_a_damaged_onnx_file_fails_cleanly_in_the_runner(tmp_path_factory, ort_checkpoint,
                                                         data, how):
    from edgecl.backbones.onnx import OrtRunner

    original, _ = ort_checkpoint
    (onnx_file,) = (original / "backbone").glob("*.onnx")
    blob = _damaged(onnx_file.read_bytes(), data, how)
    path = tmp_path_factory.mktemp("onnx") / "bad.onnx"
    path.write_bytes(bytes(blob))
    try:
        runner = call(OrtRunner, path, threads=1, input_shape=(D,))
        out = call(runner, batch(3)[0])
    except EdgeclError as error:
        assert_one_line(error)
        return
    # A flip inside a weight leaves a valid model that no loader can tell apart (checkpoints
    # record the file's SHA-256 for that); it must still give one finite row per sample.
    assert out.shape[0] == 3 and np.isfinite(out).all()


def test_list_checkpoints_never_raises_on_damage(tmp_path, source):
    shutil.copytree(source.directory, tmp_path / "ck")
    (tmp_path / "ck" / "step-000000002" / "tensors.pt").write_bytes(b"")
    (tmp_path / "ck" / "step-000000009").mkdir()
    problems = {info.step: info.problem for info in list_checkpoints(tmp_path / "ck")}
    assert problems[1] is None and "truncated" in problems[2] and "missing" in problems[9]


# -- defects the battery found, kept as regression tests ---------------------------------------

def _huge(dtype: Any, value: float) -> np.ndarray:
    x = batch(8)[0].astype(dtype)
    x[0, 0] = value
    return x


def _ragged() -> list[list[float]]:
    x = batch(2)[0].tolist()
    return [x[0], x[1][:-1]]


LEARNER_DEFECTS = {
    # _check_inputs tests isfinite before the float32 cast, which turns 1e39 into inf; the
    # batch is accepted and the head's weights and statistics become NaN.
    "float64 beyond float32": ("learn_many", lambda: (_huge(np.float64, 1e39), np.arange(8) % K),
                               {}),
    # One finite but huge input: its latent is huge, BatchRenorm's running variance in the
    # head overflows to inf, and every later prediction is class 0. Nothing checks latents
    # or the head after an update.
    "inputs whose latents overflow": ("learn_many",
                                      lambda: (_huge(np.float32, 1e30), np.arange(8) % K), {}),
    # np.asarray raises ValueError on a ragged list, outside any check.
    "ragged list": ("learn_many", lambda: (_ragged(), np.arange(2) % K), {}),
    # epochs is only compared with 1; a float reaches range() after the update has begun.
    "float epochs": ("learn_many", lambda: batch(4), {"epochs": 1.5}),
    "text epochs": ("learn_many", lambda: batch(4), {"epochs": "2"}),
    # evaluate checks no labels at all.
    "evaluate float labels": ("evaluate", lambda: (batch(4)[0], np.array([0.5, 1, 2, 3])), {}),
    "evaluate labels out of range": ("evaluate", lambda: (batch(4)[0], np.array([0, 1, 2, 99])),
                                     {}),
    "evaluate one label for four inputs": ("evaluate", lambda: (batch(4)[0], np.array([1])), {}),
    "evaluate no labels for four inputs": ("evaluate", lambda: (batch(4)[0], np.array([], int)),
                                           {}),
    "evaluate labels of another length": ("evaluate", lambda: (batch(4)[0], np.arange(3)), {}),
    "evaluate a scalar label": ("evaluate", lambda: (batch(4)[0], 1), {}),
    # sleep compares the budget with numbers; a string or None raises TypeError.
    "sleep with a text budget": ("sleep", lambda: ("5",), {}),
    "sleep with no budget": ("sleep", lambda: (None,), {}),
}


@pytest.mark.parametrize("bug", list(LEARNER_DEFECTS))
def test_learner_defect_is_refused(bug):
    method, make, kwargs = LEARNER_DEFECTS[bug]
    learner = tiny("latent-replay", update_budget_ms=20.0 if method == "sleep" else None)
    rejects(learner, method, *make(), **kwargs)
    assert all(torch.isfinite(t).all() for t in learner.state_dict().values()
               if t.is_floating_point())


# Learner.__init__ checks n_classes, the backend and the strategy's name, but not the input
# shape, the seed or the device, nor the type of n_classes or the strategy.
CONSTRUCTOR_DEFECTS = {
    "negative input size": {"input_shape": (-1,)},        # RuntimeError from torch
    "zero input size": {"input_shape": (0,)},             # accepted: a zero-width learner
    "fractional input size": {"input_shape": (16.5,)},    # accepted as 16
    "no input shape": {"input_shape": None},              # TypeError
    "text n_classes": {"n_classes": "4"},                 # TypeError
    "strategy not a name": {"strategy": 3},               # AttributeError
    "negative seed": {"seed": -1},                        # ValueError from torch
    "text seed": {"seed": "0"},                           # RuntimeError from torch
    "unknown device": {"device": "nope"},                 # RuntimeError from torch
}


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("bug", list(CONSTRUCTOR_DEFECTS))
def test_constructor_defect_is_refused(bug):
    kwargs = {"strategy": "latent-replay", "input_shape": (D,), "n_classes": K}
    with pytest.raises(EdgeclError) as info:
        call(Learner, **(kwargs | CONSTRUCTOR_DEFECTS[bug]))
    assert_one_line(info.value)


@pytest.mark.parametrize("input_shape", [[-1], []], ids=["negative", "empty"])
def test_from_checkpoint_of_a_sealed_manifest_with_an_impossible_shape(tmp_path, source,
                                                                       input_shape):
    shutil.copytree(source.directory, tmp_path / "ck")
    folder = tmp_path / "ck" / "step-000000002"
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["meta"]["input_shape"] = input_shape
    (folder / "manifest.json").write_text(json.dumps(_reseal(manifest)))
    with pytest.raises(CheckpointError) as info:   # RuntimeError, IndexError today
        call(Learner.from_checkpoint, tmp_path / "ck")
    assert_one_line(info.value)


@pytest.mark.parametrize("damage", ["compression method", "encryption flag",
                                    "deflate stream"])
def test_damaged_npz_is_refused(tmp_path, good_npz, damage):
    good, _ = good_npz["compressed" if damage == "deflate stream" else "stored"]
    blob = bytearray(good)
    # The central directory entry of the first member: signature PK\x01\x02, then version
    # made by (2), version needed (2), flags (2), compression method (2).
    entry = good.index(b"PK\x01\x02")
    if damage == "compression method":
        blob[entry + 10] ^= 0x01   # stored (0) -> 1, a method zipfile does not implement
    elif damage == "encryption flag":
        blob[entry + 8] ^= 0x01    # "encrypted": zipfile wants a password (RuntimeError)
    else:
        # The first member's data starts after its 30-byte local header and its name: a
        # flipped bit in the deflate block header makes zlib raise zlib.error.
        name_length = int.from_bytes(good[26:28], "little")
        extra_length = int.from_bytes(good[28:30], "little")
        blob[30 + name_length + extra_length] ^= 0x02
    path = tmp_path / "data.npz"
    path.write_bytes(bytes(blob))
    with pytest.raises(EdgeclError):
        load_dataset(f"npz:{path}")


def test_long_double_inputs_are_learned_as_float32():
    learner = tiny("latent-replay")
    x, y = batch(4)
    call(learner.learn_many, x.astype(np.longdouble), y)
    assert call(learner.predict_many, x.astype(np.longdouble)).shape == (4,)


def test_generators_produce_what_they_claim():
    """Guards against a generator that quietly yields valid data (a vacuous property)."""
    from hypothesis import find

    for defect in ("nonfinite", "shape", "dtype", "empty", "not an array"):
        find(bad_x((3,)), lambda drawn, d=defect: drawn[0] == d)
    learner = tiny("latent-replay", trained=False)
    call(learner.learn_many, *batch(8))    # the batch every defect starts from is fine
