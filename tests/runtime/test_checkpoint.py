"""Checkpoints: exact round trips, retention, fallback past damage, refusal of code, crashes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from edgecl.errors import CheckpointError
from edgecl.runtime import checkpoint as ck
from edgecl.runtime.checkpoint import (
    FORMAT_VERSION,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

META = {"strategy": "ar1*", "backbone": "cnn", "input_shape": [1, 8, 8], "n_updates": 7}


def _bits(t: torch.Tensor) -> bytes:
    """A tensor's exact bytes (NaN payloads and -0.0 included)."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _assert_same(loaded: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    assert list(loaded) == list(saved)
    for name, t in saved.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape, name
        assert _bits(loaded[name]) == _bits(t.detach()), name


def _save(directory: Path, step: int, **kwargs) -> Path:
    tensors = {"w": torch.full((4, 3), float(step)), "count": torch.tensor(step)}
    return save_checkpoint(directory, tensors=tensors, meta={**META, "step": step}, step=step,
                           **kwargs)


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_sealed(path: Path, manifest: dict) -> None:
    """Write a manifest with a correct manifest_sha256, by the recipe in the format doc."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    body["manifest_sha256"] = hashlib.sha256(canonical.encode("ascii")).hexdigest()
    (path / "manifest.json").write_text(json.dumps(body, indent=2))


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# -- round trips ----------------------------------------------------------------------------
def test_round_trip_is_bitwise_for_every_dtype_and_shape(tmp_path):
    big = torch.arange(10_000, dtype=torch.float32)
    weight = nn.Parameter(torch.randn(3, 5))
    saved = {
        "f32": torch.tensor([1.5, -0.0, float("nan"), float("inf")]),
        "f16": torch.randn(7, 3).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "u8": torch.randint(0, 256, (5, 4), dtype=torch.uint8),
        "i64": torch.tensor([-(2**62), 0, 2**62]),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.25, dtype=torch.float64),
        "empty": torch.empty(0, 3),
        "transposed": torch.randn(3, 4).t(),   # not contiguous
        "slice": big[100:110],                 # a view into 40 KB of storage
        "param": weight,                       # requires grad
        "alias": weight,                       # the same tensor under two names
        "name with spaces/and.dots": torch.ones(1),
    }
    meta = {"strategy": "ar1*", "input_shape": (1, 8, 8), "nested": {"lr": 0.01, "ok": None}}
    path = save_checkpoint(tmp_path, tensors=saved, meta=meta, step=42)

    assert path == tmp_path / "step-000000042"
    checkpoint = load_checkpoint(tmp_path)
    assert (checkpoint.path, checkpoint.step, checkpoint.skipped) == (path, 42, [])
    _assert_same(checkpoint.tensors, saved)
    assert checkpoint.meta == {**meta, "input_shape": [1, 8, 8]}  # JSON keeps lists
    loaded = checkpoint.tensors
    assert all(type(t) is torch.Tensor and not t.requires_grad for t in loaded.values())
    # Views are stored as their data, not their storage, and loaded tensors are independent.
    assert (path / "tensors.pt").stat().st_size < 20_000
    loaded["param"].zero_()
    assert loaded["alias"].abs().sum() > 0
    assert saved["param"].abs().sum() > 0  # the caller's tensors are untouched


def test_manifest_is_readable_and_records_what_the_format_doc_says(tmp_path):
    import edgecl

    path = save_checkpoint(tmp_path, tensors={"w": torch.zeros(2, 3, dtype=torch.float16)},
                           meta=META, step=5)
    manifest = _manifest(path)
    assert manifest["format"] == "edgecl-checkpoint"
    assert manifest["format_version"] == FORMAT_VERSION == 1
    assert manifest["edgecl_version"] == edgecl.__version__
    assert (manifest["step"], manifest["meta"]) == (5, META)
    assert manifest["tensors"] == {"w": {"dtype": "float16", "shape": [2, 3]}}
    payload = (path / "tensors.pt").read_bytes()
    assert manifest["files"] == {"tensors.pt": {"sha256": hashlib.sha256(payload).hexdigest(),
                                                "bytes": len(payload)}}
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "tensors.pt"]
    # The documented recipe for the manifest's own digest reproduces it.
    _write_sealed(path, manifest)
    assert _manifest(path)["manifest_sha256"] == manifest["manifest_sha256"]


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(
    st.text(max_size=12),
    st.tuples(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64,
                               torch.uint8, torch.int8, torch.int32, torch.int64, torch.bool,
                               torch.complex64]),
              st.lists(st.integers(0, 4), max_size=3), st.integers(0, 2**32 - 1)),
    max_size=5))
def test_random_tensor_dicts_round_trip_exactly(spec):
    saved = {}
    for name, (dtype, shape, seed) in spec.items():
        n_bytes = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
        raw = torch.randint(0, 256, (n_bytes,), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(seed))
        if dtype == torch.bool:
            raw = raw % 2
        saved[name] = raw.view(dtype).reshape(shape)
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(directory, tensors=saved, meta={"n": len(saved)}, step=1)
        _assert_same(load_checkpoint(directory).tensors, saved)


# -- retention ------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keeps_only_the_newest(tmp_path, keep):
    for step in (10, 20, 30, 40, 50):
        _save(tmp_path, step, keep=keep)
    steps = [info.step for info in list_checkpoints(tmp_path)]
    assert steps == [10, 20, 30, 40, 50][-keep:]
    assert all(info.problem is None and info.nbytes > 0 for info in list_checkpoints(tmp_path))
    assert load_checkpoint(tmp_path).step == 50
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_save_refuses_a_step_that_an_intact_checkpoint_already_has(tmp_path):
    _save(tmp_path, 5)
    for step in (5, 3):
        with pytest.raises(CheckpointError, match="already holds checkpoint step-000000005"):
            _save(tmp_path, step)
    assert [info.step for info in list_checkpoints(tmp_path)] == [5]


def test_damaged_checkpoints_at_or_after_the_step_are_replaced(tmp_path):
    # A run that fell back past damaged step 30 to step 20 continues from there.
    for step in (10, 20, 30):
        _save(tmp_path, step, keep=3)
    (tmp_path / "step-000000030" / "manifest.json").unlink()
    _save(tmp_path, 25, keep=3)
    assert [info.step for info in list_checkpoints(tmp_path)] == [10, 20, 25]
    (tmp_path / "step-000000025" / "tensors.pt").write_bytes(b"")
    _save(tmp_path, 25, keep=3)
    checkpoint = load_checkpoint(tmp_path)
    assert (checkpoint.step, checkpoint.skipped) == (25, [])


# -- damage and fallback --------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = (path / "tensors.pt").read_bytes()
    (path / "tensors.pt").write_bytes(data[: len(data) // 2])


def _flip_payload_bit(path: Path) -> None:
    data = bytearray((path / "tensors.pt").read_bytes())
    data[len(data) // 2] ^= 0x10
    (path / "tensors.pt").write_bytes(bytes(data))


def _flip_meta_bit(path: Path) -> None:
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text.replace('"ar1*"', '"ar1+"'))


def _garbage_manifest(path: Path) -> None:
    (path / "manifest.json").write_bytes(b'{"format": "edgecl-checkpoint", "format_vers\xff')


def _unknown_key(path: Path) -> None:
    _write_sealed(path, {**_manifest(path), "extra": 1})


def _shape_lie(path: Path) -> None:
    manifest = _manifest(path)
    manifest["tensors"]["w"]["shape"] = [3, 4]
    _write_sealed(path, manifest)


DAMAGE = {
    "truncated tensors": (_truncate, "truncated"),
    "bit flip in tensors": (_flip_payload_bit, "SHA-256 does not match"),
    "bit flip in meta": (_flip_meta_bit, "manifest_sha256 does not match"),
    "deleted manifest": (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
    "deleted tensors": (lambda p: (p / "tensors.pt").unlink(), "tensors.pt is missing"),
    "garbage manifest": (_garbage_manifest, "not valid JSON"),
    "empty manifest": (lambda p: (p / "manifest.json").write_text(""), "not valid JSON"),
    "unknown manifest key": (_unknown_key, "unknown key 'extra'"),
    "shape differs from manifest": (_shape_lie, "the manifest says float32 [3, 4]"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_newest_falls_back_to_the_previous_one(tmp_path, damage):
    harm, why = damage
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    harm(newest)

    checkpoint = load_checkpoint(tmp_path, expect={"strategy": "ar1*"})
    assert checkpoint.step == 1
    assert checkpoint.meta["step"] == 1 and int(checkpoint.tensors["count"]) == 1
    assert len(checkpoint.skipped) == 1
    assert checkpoint.skipped[0].startswith("step-000000002: ") and why in checkpoint.skipped[0]
    info = list_checkpoints(tmp_path)
    assert info[0].problem is None
    # list_checkpoints reads no tensors: it sees the same damage unless only unpickling does.
    assert info[1].problem is not None or why.startswith("the manifest says")


def test_no_intact_checkpoint_lists_what_was_wrong_with_each(tmp_path):
    _truncate(_save(tmp_path, 1))
    (_save(tmp_path, 2) / "manifest.json").unlink()
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(tmp_path)
    message = _one_line_error(excinfo)
    assert message.startswith(f"no intact checkpoint in {tmp_path}: ")
    assert "step-000000002: manifest.json is missing" in message
    assert "step-000000001: tensors.pt is truncated" in message


def test_newer_format_version_is_a_clear_error_not_damage(tmp_path):
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    _write_sealed(newest, {**_manifest(newest), "format_version": FORMAT_VERSION + 1})
    with pytest.raises(CheckpointError, match=r"format version 2, but edgecl .* reads format "
                                              r"version 1; upgrade edgecl"):
        load_checkpoint(tmp_path)
    # Nor is it replaced as if it were damaged.
    with pytest.raises(CheckpointError, match="format version 2"):
        _save(tmp_path, 2)
    assert (newest / "tensors.pt").exists()


@pytest.mark.parametrize("make", ["missing", "empty", "only leftovers"])
def test_no_checkpoint_says_how_to_start(tmp_path, make):
    directory = tmp_path / "ckpt"
    if make != "missing":
        directory.mkdir()
    if make == "only leftovers":
        (directory / ".tmp-step-000000001-123-0badf00d").mkdir()
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(directory)
    assert _one_line_error(excinfo).startswith(f"no checkpoint in {directory}")
    assert str(excinfo.value).endswith("run without --resume first")
    assert list_checkpoints(directory) == []


def test_leftovers_of_a_killed_writer_are_ignored_then_cleaned(tmp_path):
    _save(tmp_path, 1)
    # A writer killed mid-save: its temporary directory holds a partial checkpoint of step 2.
    leftover = tmp_path / ".tmp-step-000000002-4242-deadbeef"
    leftover.mkdir()
    (leftover / "tensors.pt").write_bytes(b"PK\x03\x04 half")
    retiring = tmp_path / ".old-step-000000000-4242-deadbeef"
    retiring.mkdir()
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("mine")

    assert load_checkpoint(tmp_path).step == 1
    assert [info.step for info in list_checkpoints(tmp_path)] == [1]
    _save(tmp_path, 2)
    assert not leftover.exists() and not retiring.exists() and unrelated.exists()
    assert load_checkpoint(tmp_path).step == 2


# -- meta expectations ----------------------------------------------------------------------
def test_expect_mismatch_names_key_and_both_values_without_falling_back(tmp_path):
    save_checkpoint(tmp_path, tensors={}, meta={**META, "strategy": "ar1*"}, step=1)
    save_checkpoint(tmp_path, tensors={}, meta={**META, "strategy": "naive"}, step=2)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(tmp_path, expect={"strategy": "ar1*", "backbone": "cnn"})
    assert _one_line_error(excinfo) == (f"checkpoint {tmp_path / 'step-000000002'} was made "
                                        "with strategy 'naive', this run uses 'ar1*'")
    with pytest.raises(CheckpointError, match="has no 'backbone_sha256' in its meta, this run "
                                              "uses 'abc'"):
        load_checkpoint(tmp_path, expect={"backbone_sha256": "abc"})
    with pytest.raises(CheckpointError, match=r"input_shape \[1, 8, 8\], this run uses "
                                              r"\[1, 28, 28\]"):
        load_checkpoint(tmp_path, expect={"input_shape": (1, 28, 28)})
    # Tuples match the lists JSON stores them as.
    assert load_checkpoint(tmp_path, expect={"input_shape": (1, 8, 8)}).step == 2


# -- crashes --------------------------------------------------------------------------------
def test_a_crash_before_the_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1, keep=1)

    def power_cut(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ck.os, "rename", power_cut)
    with pytest.raises(CheckpointError) as excinfo:
        _save(tmp_path, 2, keep=1)
    assert "could not write checkpoint step-000000002" in _one_line_error(excinfo)
    monkeypatch.undo()
    checkpoint = load_checkpoint(tmp_path)
    assert (checkpoint.step, checkpoint.skipped) == (1, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "step-000000001"]


def test_a_crash_mid_payload_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1, keep=1)
    real_save = torch.save

    def half_save(obj, file):
        real_save(obj, file)
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(ck.torch, "save", half_save)
    with pytest.raises(CheckpointError, match="file write failed$"):
        _save(tmp_path, 2, keep=1)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).step == 1
    assert [info.step for info in list_checkpoints(tmp_path)] == [1]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_each_stage_is_durable_before_the_next_begins(tmp_path, monkeypatch):
    # What makes a power cut safe: data, then names, then the rename, then deletions.
    _save(tmp_path, 1, keep=1)
    events = []
    real_fsync, real_rename, real_rmtree = os.fsync, os.rename, shutil.rmtree

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", Path(src).name[:18], Path(dst).name[:18]))
        real_rename(src, dst)

    def rmtree(path, *args, **kwargs):
        events.append(("rmtree", Path(path).name[:18]))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ck.os, "fsync", fsync)
    monkeypatch.setattr(ck.os, "rename", rename)
    monkeypatch.setattr(ck.shutil, "rmtree", rmtree)
    _save(tmp_path, 2, keep=1)
    assert events == [
        ("fsync", "tensors.pt"),
        ("fsync", "manifest.json"),
        ("fsync", events[2][1]),  # the temporary directory, checked next
        ("rename", ".tmp-step-00000000", "step-000000002"),
        ("fsync", tmp_path.name),
        ("rename", "step-000000001", ".old-step-00000000"),
        ("rmtree", ".old-step-00000000"),
    ]
    assert events[2][1].startswith(".tmp-step-000000002-")


_SAVER = textwrap.dedent("""
    import sys, torch
    from edgecl.runtime.checkpoint import save_checkpoint
    step = int(sys.argv[2])
    while True:
        tensors = {"w": torch.full((256, 1024), float(step)), "step": torch.tensor(step)}
        save_checkpoint(sys.argv[1], tensors=tensors, meta={"step": step}, step=step, keep=2)
        print(step, flush=True)
        step += 1
""")


def test_sigkill_at_a_random_moment_leaves_an_intact_newest_checkpoint(tmp_path):
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    next_step, last_saved = 1, 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path), str(next_step)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        try:
            line = proc.stdout.readline()  # one save done: the kill lands in a later one
            assert line, proc.stderr.read()
            last_saved = int(line)
            time.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            out, _ = proc.communicate()
        last_saved = max([last_saved, *map(int, out.split())])
        checkpoint = load_checkpoint(tmp_path)
        assert checkpoint.skipped == []
        assert checkpoint.step >= last_saved  # every save that returned is durable
        assert checkpoint.meta == {"step": checkpoint.step}
        assert int(checkpoint.tensors["step"]) == checkpoint.step
        assert bool((checkpoint.tensors["w"] == checkpoint.step).all())
        assert all(info.problem is None for info in list_checkpoints(tmp_path))
        next_step = checkpoint.step + 1  # resume, as the learner would


# -- untrusted input ------------------------------------------------------------------------
class _RunsCode:
    """Unpickling this calls exec: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_a_payload_that_would_run_code_is_refused_without_running_it(tmp_path):
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    marker = tmp_path / "code-ran"
    torch.save({"w": _RunsCode(marker), "count": torch.tensor(2)}, newest / "tensors.pt")
    # The payload really is dangerous: a full unpickler runs it.
    probe = tmp_path / "probe"
    torch.save({"w": _RunsCode(probe)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()
    # A valid hash in a valid manifest does not get it past the weights-only unpickler.
    manifest = _manifest(newest)
    payload = (newest / "tensors.pt").read_bytes()
    manifest["files"]["tensors.pt"] = {"sha256": hashlib.sha256(payload).hexdigest(),
                                       "bytes": len(payload)}
    _write_sealed(newest, manifest)

    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.step == 1 and "not a file of plain tensors" in checkpoint.skipped[0]
    assert not marker.exists()
    (tmp_path / "step-000000001").rename(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(tmp_path)
    message = _one_line_error(excinfo)
    assert "step-000000002: tensors.pt is not a file of plain tensors (UnpicklingError: " in message
    assert "exec" in message  # what was refused, not torch's advice to turn the check off
    assert "weights_only" not in message and "\x1b" not in message
    assert not marker.exists()


def test_a_pickle_instead_of_a_torch_file_is_refused(tmp_path):
    newest = _save(tmp_path, 1)
    payload = pickle.dumps({"w": torch.zeros(4, 3), "count": torch.tensor(1)})
    (newest / "tensors.pt").write_bytes(payload)
    manifest = _manifest(newest)
    manifest["files"]["tensors.pt"] = {"sha256": hashlib.sha256(payload).hexdigest(),
                                       "bytes": len(payload)}
    _write_sealed(newest, manifest)
    with pytest.raises(CheckpointError, match="not a file of plain tensors"):
        load_checkpoint(tmp_path)


_SETTINGS = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes_as_manifest_only_raise_checkpoint_error(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("ckpt")
    (_save(directory, 1) / "manifest.json").write_bytes(data)
    with pytest.raises(CheckpointError):
        load_checkpoint(directory)


@_SETTINGS
@given(data=st.binary(max_size=3000), sealed=st.booleans())
def test_random_bytes_as_tensors_only_raise_checkpoint_error(tmp_path_factory, data, sealed):
    directory = tmp_path_factory.mktemp("ckpt")
    path = _save(directory, 1)
    (path / "tensors.pt").write_bytes(data)
    if sealed:  # the hash matches, so the bytes reach torch.load
        manifest = _manifest(path)
        manifest["files"]["tensors.pt"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                           "bytes": len(data)}
        _write_sealed(path, manifest)
    with pytest.raises(CheckpointError):
        load_checkpoint(directory)


# -- bad arguments --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"tensors": {"w": [1.0]}}, r"tensors\['w'\] is a list, not a torch.Tensor"),
    ({"tensors": {3: torch.ones(1)}}, "tensor names must be strings"),
    ({"tensors": {"s": torch.ones(2).to_sparse()}}, "only dense tensors"),
    ({"meta": {"classes": {1, 2}}}, r"meta\['classes'\] is a set, which JSON cannot hold"),
    ({"meta": {"lr": float("nan")}}, r"meta\['lr'\] is nan"),
    ({"meta": {"map": {1: "a"}}}, "JSON keys must be strings"),
    ({"meta": ["not", "a", "dict"]}, "meta must be a mapping"),
    ({"step": -1}, "step must be an integer >= 0"),
    ({"step": 1.5}, "step must be an integer >= 0"),
    ({"keep": 0}, "keep must be an integer >= 1"),
])
def test_bad_arguments_raise_checkpoint_error_and_write_nothing(tmp_path, kwargs, match):
    args = {"tensors": {"w": torch.ones(2)}, "meta": {}, "step": 1, **kwargs}
    with pytest.raises(CheckpointError, match=match):
        save_checkpoint(tmp_path / "ckpt", **args)
    assert not (tmp_path / "ckpt").exists()


def test_a_second_writer_in_the_same_directory_is_refused(tmp_path):
    _save(tmp_path, 1)
    with open(tmp_path / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process's save in progress
        with pytest.raises(CheckpointError, match="another process is saving checkpoints"):
            _save(tmp_path, 2)
    _save(tmp_path, 2)


def test_an_unwritable_directory_is_a_checkpoint_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(CheckpointError, match="cannot create checkpoint directory"):
        _save(tmp_path / "file" / "ckpt", 1)
