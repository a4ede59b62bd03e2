"""Checkpoints: durable, verified storage of a learner's tensors and metadata.

One checkpoint is one directory (docs/checkpoint-format.md describes the format in full):

    DIR/step-000001200/manifest.json   versions, step, the caller's meta, each tensor's
                                       dtype and shape, the SHA-256 of tensors.pt
    DIR/step-000001200/tensors.pt      torch.save of a flat {name: tensor} dict

Saving writes a hidden temporary directory, fsyncs it and renames it into place, so a crash
at any moment leaves every earlier checkpoint as it was; older checkpoints are deleted only
once the new one is complete. Loading verifies the manifest, every hash, and every tensor's
dtype and shape, falls back past damaged checkpoints to the newest intact one, and reads the
tensors with ``weights_only=True``: an untrusted checkpoint cannot run code.

One process writes to a directory at a time (a lock enforces it where the OS has ``flock``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import edgecl
from edgecl._files import fsync_dir as _fsync_dir
from edgecl.errors import CheckpointError, EdgeclWarning

FORMAT_VERSION = 1

_FORMAT = "edgecl-checkpoint"
_MANIFEST = "manifest.json"
_TENSORS = "tensors.pt"
_LOCK = ".lock"
_STEP_DIR = re.compile(r"step-(\d{9,})")
# A writer's work in progress (.tmp-) and checkpoints on their way out (.old-): never loaded,
# removed by the next save. The random suffix keeps two names from ever colliding.
_LEFTOVER = re.compile(r"\.(tmp|old)-step-\d{9,}-\d+-[0-9a-f]{8}")
_MANIFEST_KEYS = frozenset({"format", "format_version", "edgecl_version", "torch_version",
                            "step", "created", "meta", "tensors", "files", "manifest_sha256"})
_MAX_MANIFEST_BYTES = 16 * 2**20   # far above any real manifest; garbage is not read whole
_CHUNK = 2**20                     # hashing reads 1 MiB at a time
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint that passed every check, as :func:`load_checkpoint` returns it."""

    path: Path
    step: int
    tensors: dict[str, torch.Tensor] = field(repr=False)  # megabytes would fill a repr
    meta: dict[str, Any]
    skipped: list[str]  # newer checkpoints that were damaged, newest first: "step-…: why"


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint directory, as :func:`list_checkpoints` finds it."""

    path: Path
    step: int
    nbytes: int          # manifest and payload together, as on disk
    problem: str | None  # None: the manifest is well formed and every payload hash matches


class _Damaged(Exception):
    """A checkpoint that is truncated, altered or incomplete: loading falls back past it."""


# -- public API -----------------------------------------------------------------------------
def save_checkpoint(
    directory: str | os.PathLike[str],
    *,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    step: int,
    keep: int = 2,
) -> Path:
    """Write ``tensors`` and ``meta`` as checkpoint ``DIR/step-<step>`` and return its path.

    ``meta`` must be JSON data (tuples are stored as lists). Once the new checkpoint is
    complete, only the ``keep`` newest remain. ``step`` must be newer than every intact
    checkpoint already in the directory; damaged ones at or after it are replaced.
    """
    directory = Path(directory)
    step = _check_step(step)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise CheckpointError(f"keep must be an integer >= 1, got {keep!r}")
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"meta must be a mapping, got {type(meta).__name__}")
    meta = _jsonable(meta, "meta")
    payload = _own_tensors(tensors)
    final = directory / _step_name(step)
    _make_directory(directory)
    with _writer_lock(directory):
        _remove_leftovers(directory)
        superseded = _superseded(directory, step)
        tmp = directory / f".tmp-{_step_name(step)}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            files = {_TENSORS: _write_tensors(tmp / _TENSORS, payload)}
            _write_file(tmp / _MANIFEST, _manifest_bytes(step, meta, payload, files))
            _fsync_dir(tmp)  # the two files' entries are durable before the rename
            for path in superseded:  # damaged, so nothing of value is out of place meanwhile
                _retire(path, directory)
            os.rename(tmp, final)
            _fsync_dir(directory)  # the rename is durable before anything older is deleted
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(error, Exception):
                raise CheckpointError(f"could not write checkpoint {final.name} in "
                                      f"{directory}: {_one_line(error)}") from error
            raise
        older = [path for s, path in _step_dirs(directory) if s < step]
        for path in older[:max(0, len(older) - (keep - 1))]:
            _discard(path, directory)
    return final


def load_checkpoint(
    directory: str | os.PathLike[str],
    *,
    expect: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """The newest intact checkpoint in ``directory``, verified in full.

    Damaged newer checkpoints are passed over and listed in ``Checkpoint.skipped``. Each
    key of ``expect`` must equal the same key of the checkpoint's meta, else CheckpointError
    (a mismatch is not damage: older checkpoints are not tried).
    """
    directory = Path(directory)
    expected = _jsonable(expect, "expect") if expect is not None else {}
    if not isinstance(expected, dict):
        raise CheckpointError(f"expect must be a mapping, got {type(expect).__name__}")
    found = _step_dirs(directory)
    if not found:
        why = "" if directory.is_dir() else " (no such directory)"
        raise CheckpointError(f"no checkpoint in {directory}{why}; run without --resume first")
    skipped: list[str] = []
    for step, path in reversed(found):
        try:
            manifest = _read_manifest(path, step)
            _verify_files(path, manifest)
            tensors = _load_tensors(path, manifest)
        except _Damaged as why:
            skipped.append(f"{path.name}: {why}")
            continue
        _check_expected(path, manifest["meta"], expected)
        return Checkpoint(path=path, step=step, tensors=tensors, meta=manifest["meta"],
                          skipped=skipped)
    raise CheckpointError(f"no intact checkpoint in {directory}: {'; '.join(skipped)}")


def list_checkpoints(directory: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Every checkpoint directory in ``directory``, oldest first, with its integrity checked
    (manifest and payload hashes; the tensors themselves are read only by loading).

    A missing directory holds none; work in progress from a writer is not listed.
    """
    infos = []
    for step, path in _step_dirs(Path(directory)):
        infos.append(CheckpointInfo(path=path, step=step, nbytes=_tree_bytes(path),
                                    problem=_problem(path, step)))
    return infos


# -- writing --------------------------------------------------------------------------------
def _check_step(step: Any) -> int:
    if isinstance(step, numbers.Integral) and not isinstance(step, bool) and step >= 0:
        return int(step)
    raise CheckpointError(f"step must be an integer >= 0, got {step!r}")


def _step_name(step: int) -> str:
    return f"step-{step:09d}"


def _own_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain, contiguous CPU tensors that each own their whole storage.

    torch.save writes a view's entire storage and restores views as views; copying those
    (and only those) keeps the file as small as the data and each loaded tensor independent.
    """
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"tensors must be a mapping of names to tensors, "
                              f"got {type(tensors).__name__}")
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise CheckpointError(f"tensor names must be strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"tensors[{name!r}] is a {type(tensor).__name__}, "
                                  "not a torch.Tensor")
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_meta:
            raise CheckpointError(f"tensors[{name!r}]: only dense tensors with data can be "
                                  f"saved, got layout {tensor.layout}, dtype {tensor.dtype}"
                                  f"{' on the meta device' if tensor.is_meta else ''}")
        t = tensor.detach().cpu().resolve_conj().resolve_neg().as_subclass(torch.Tensor)
        storage = t.untyped_storage()
        if not (t.is_contiguous() and t.storage_offset() == 0
                and storage.nbytes() == t.numel() * t.element_size()
                and (storage.data_ptr() not in storages or storage.nbytes() == 0)):
            t = t.clone(memory_format=torch.contiguous_format)
        storages.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (tuples become lists), or CheckpointError naming where."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise CheckpointError(f"{where} is {value}, which JSON cannot hold")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{where} has key {key!r}; JSON keys must be strings")
            out[key] = _jsonable(v, f"{where}[{key!r}]")
        return out
    raise CheckpointError(f"{where} is a {type(value).__name__}, which JSON cannot hold; "
                          "convert it to a number, string, list or dict")


class _HashingWriter:
    """A binary file that hashes and counts what passes through, so payloads are not re-read."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.nbytes += len(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()


def _write_tensors(path: Path, payload: dict[str, torch.Tensor]) -> dict[str, Any]:
    with open(path, "xb") as file:
        writer = _HashingWriter(file)
        torch.save(payload, writer)
        file.flush()
        os.fsync(file.fileno())
    return {"sha256": writer.sha256.hexdigest(), "bytes": writer.nbytes}


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _manifest_bytes(step: int, meta: dict[str, Any], payload: dict[str, torch.Tensor],
                    files: dict[str, dict[str, Any]]) -> bytes:
    manifest = {
        "format": _FORMAT,
        "format_version": FORMAT_VERSION,
        "edgecl_version": edgecl.__version__,
        "torch_version": str(torch.__version__),
        "step": step,
        "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "meta": meta,
        "tensors": {name: {"dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
                    for name, t in payload.items()},
        "files": files,
    }
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    return _readable_json(manifest).encode("ascii")


def _readable_json(manifest: dict[str, Any]) -> str:
    """Indented JSON with one line per tensor and per file: a model with 200 tensors reads
    as 200 lines, not 1,600."""
    def dump(value: Any, **layout: Any) -> str:
        return json.dumps(value, ensure_ascii=True, allow_nan=False, **layout)

    parts = []
    for key, value in manifest.items():
        if key in ("tensors", "files") and value:
            rows = ",\n".join(f"    {dump(k)}: {dump(v, separators=(', ', ': '))}"
                              for k, v in value.items())
            text = "{\n" + rows + "\n  }"
        else:
            text = dump(value, indent=2).replace("\n", "\n  ")
        parts.append(f"  {dump(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON, its own ``manifest_sha256`` left out: a
    flipped bit anywhere in the manifest, meta included, shows as damage."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _make_directory(directory: Path) -> None:
    if directory.is_dir():
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _fsync_dir(directory.parent)
    except OSError as error:
        raise CheckpointError(f"cannot create checkpoint directory {directory}: "
                              f"{_one_line(error)}") from None


@contextlib.contextmanager
def _writer_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on DIR/.lock while saving; the OS drops it if we are killed."""
    try:
        import fcntl
    except ImportError:  # Windows: one writer per directory is up to the caller
        yield
        return
    try:
        fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise CheckpointError(f"cannot write to checkpoint directory {directory}: "
                              f"{_one_line(error)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(f"another process is saving checkpoints in {directory}; "
                                  "give each run its own directory") from None
        except OSError:
            pass  # a file system without locks (some network mounts): go on unlocked
        yield
    finally:
        os.close(fd)


def _remove_leftovers(directory: Path) -> None:
    """Delete what killed writers left behind (only names this module makes)."""
    for entry in _scan(directory):
        if _LEFTOVER.fullmatch(entry.name):
            shutil.rmtree(entry.path, ignore_errors=True)


def _superseded(directory: Path, step: int) -> list[Path]:
    """Checkpoints at or after ``step``: CheckpointError if one is intact (it would shadow
    the new one, or be lost), else the damaged ones, to be replaced."""
    damaged = []
    for s, path in _step_dirs(directory):
        if s < step:
            continue
        try:  # a newer format's CheckpointError passes through: that is no damage
            _verify_files(path, _read_manifest(path, s))
        except _Damaged:
            damaged.append(path)
            continue
        raise CheckpointError(f"{directory} already holds checkpoint {path.name}, not "
                                  f"older than step {step}; resume from it, or save to an "
                                  "empty directory")
    return damaged


def _retire(path: Path, directory: Path) -> Path:
    """Rename a checkpoint out of the loader's sight, in one atomic step."""
    target = directory / f".old-{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(path, target)
    return target


def _discard(path: Path, directory: Path) -> None:
    """Delete an old checkpoint; a failure only warns, since the new one is already safe."""
    try:
        retired = _retire(path, directory)
    except OSError as error:
        warnings.warn(f"could not delete old checkpoint {path}: {_one_line(error)}",
                      EdgeclWarning, stacklevel=3)
        return
    shutil.rmtree(retired, ignore_errors=True)  # what remains goes with the next save


# -- reading --------------------------------------------------------------------------------
def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint directory {directory}: "
                              f"{_one_line(error)}") from None


def _step_dirs(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint directory, oldest first."""
    found = []
    for entry in _scan(directory):
        match = _STEP_DIR.fullmatch(entry.name)
        if match and entry.is_dir(follow_symlinks=False):
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def _problem(path: Path, step: int) -> str | None:
    """Why the checkpoint at ``path`` is damaged or unreadable here, or None if intact."""
    try:
        _verify_files(path, _read_manifest(path, step))
    except (_Damaged, CheckpointError) as why:
        return str(why)
    return None


def _tree_bytes(path: Path) -> int:
    total = 0
    with contextlib.suppress(OSError), os.scandir(path) as entries:
        for entry in entries:
            total += entry.stat(follow_symlinks=False).st_size
    return total


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a float")
    return value


def _read_manifest(path: Path, step: int) -> dict[str, Any]:
    """The parsed, fully validated manifest of the checkpoint at ``path``.

    Raises _Damaged for anything wrong with it, and CheckpointError for a manifest of a
    newer format, which is not damage: falling back would silently lose newer progress.
    """
    try:
        with open(path / _MANIFEST, "rb") as file:
            data = file.read(_MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise _Damaged(f"{_MANIFEST} is missing") from None
    except OSError as error:
        raise _Damaged(f"cannot read {_MANIFEST}: {_one_line(error)}") from None
    if len(data) > _MAX_MANIFEST_BYTES:
        raise _Damaged(f"{_MANIFEST} is over {_MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=_reject_duplicates,
                              parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _Damaged(f"{_MANIFEST} is not valid JSON ({_one_line(error)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise _Damaged(f"{_MANIFEST} is not an edgecl checkpoint manifest")
    version = manifest.get("format_version")
    if _is_int(version) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, but edgecl "
            f"{edgecl.__version__} reads format version {FORMAT_VERSION}; upgrade edgecl")
    if version != FORMAT_VERSION or not _is_int(version):
        raise _Damaged(f"{_MANIFEST} has format_version {version!r}, expected "
                       f"{FORMAT_VERSION}")
    _require_keys(manifest, _MANIFEST_KEYS, _MANIFEST)
    try:
        digest = _manifest_digest(manifest)
    except (ValueError, RecursionError):  # nesting too deep to write back
        digest = None
    if manifest["manifest_sha256"] != digest:
        raise _Damaged(f"{_MANIFEST} is damaged or was edited: its manifest_sha256 does not "
                       "match its content")
    if manifest["step"] != step or not _is_int(manifest["step"]):
        raise _Damaged(f"{_MANIFEST} is for step {manifest['step']!r}, not {step}")
    for key in ("edgecl_version", "torch_version", "created"):
        if not isinstance(manifest[key], str):
            raise _Damaged(f"{_MANIFEST}: {key} is not a string")
    if not isinstance(manifest["meta"], dict):
        raise _Damaged(f"{_MANIFEST}: meta is not an object")
    _check_tensor_table(manifest["tensors"])
    _check_file_table(manifest["files"])
    return manifest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_keys(obj: Any, keys: frozenset[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise _Damaged(f"{where} is not an object")
    missing, unknown = sorted(keys - obj.keys()), sorted(obj.keys() - keys)
    if missing:
        raise _Damaged(f"{where} lacks {', '.join(missing)}")
    if unknown:
        raise _Damaged(f"{where} has unknown key {unknown[0]!r}")


def _check_tensor_table(table: Any) -> None:
    if not isinstance(table, dict):
        raise _Damaged(f"{_MANIFEST}: tensors is not an object")
    for name, entry in table.items():
        where = f"{_MANIFEST}: tensors[{name!r}]"
        _require_keys(entry, frozenset({"dtype", "shape"}), where)
        if _dtype(entry["dtype"]) is None:
            raise _Damaged(f"{where} has unknown dtype {entry['dtype']!r}")
        shape = entry["shape"]
        if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
            raise _Damaged(f"{where} has shape {shape!r}, not a list of sizes")


def _check_file_table(table: Any) -> None:
    where = f"{_MANIFEST}: files"
    _require_keys(table, frozenset({_TENSORS}), where)
    entry = table[_TENSORS]
    _require_keys(entry, frozenset({"sha256", "bytes"}), f"{where}[{_TENSORS!r}]")
    if not (isinstance(entry["sha256"], str) and _SHA256_HEX.fullmatch(entry["sha256"])):
        raise _Damaged(f"{where}[{_TENSORS!r}] has no valid sha256")
    if not (_is_int(entry["bytes"]) and entry["bytes"] >= 0):
        raise _Damaged(f"{where}[{_TENSORS!r}] has no valid byte count")


def _dtype(name: Any) -> torch.dtype | None:
    if not isinstance(name, str) or not name.isidentifier():
        return None
    dtype = getattr(torch, name, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def _verify_files(path: Path, manifest: dict[str, Any]) -> None:
    for name, entry in manifest["files"].items():
        file_path = path / name
        try:
            size = file_path.stat().st_size
            if size != entry["bytes"]:
                raise _Damaged(f"{name} is truncated or padded: {size} bytes, the manifest "
                               f"says {entry['bytes']}")
            digest = _sha256(file_path)
        except FileNotFoundError:
            raise _Damaged(f"{name} is missing") from None
        except OSError as error:
            raise _Damaged(f"cannot read {name}: {_one_line(error)}") from None
        if digest != entry["sha256"]:
            raise _Damaged(f"{name} is damaged: its SHA-256 does not match the manifest")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _load_tensors(path: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    try:
        # weights_only: the unpickler builds tensors and plain containers only, so a file
        # crafted to run code on load is refused instead (its hash may well match). What
        # torch would warn about here ends up in our error, if anywhere.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.load(path / _TENSORS, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickled code, unknown types ...
        raise _Damaged(f"{_TENSORS} is not a file of plain tensors "
                       f"({type(error).__name__}: {_unpickler_reason(error)})") from None
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise _Damaged(f"{_TENSORS} does not hold a dict of named tensors")
    table = manifest["tensors"]
    missing, unknown = sorted(table.keys() - loaded.keys()), sorted(loaded.keys() - table.keys())
    if missing or unknown:
        raise _Damaged(f"{_TENSORS} and {_MANIFEST} disagree on tensor names "
                       f"(missing {missing[:3]}, unlisted {unknown[:3]})")
    tensors = {}
    for name, entry in table.items():
        t = loaded[name]
        if type(t) is not torch.Tensor or t.layout != torch.strided:
            raise _Damaged(f"{_TENSORS}: {name!r} is a {type(t).__name__}, not a dense tensor")
        if t.dtype != _dtype(entry["dtype"]) or list(t.shape) != entry["shape"]:
            raise _Damaged(f"{_TENSORS}: {name!r} is {_dtype_name(t.dtype)} {list(t.shape)}, "
                           f"the manifest says {entry['dtype']} {entry['shape']}")
        tensors[name] = t
    return tensors


def _check_expected(path: Path, meta: dict[str, Any], expected: dict[str, Any]) -> None:
    wrong = []
    for key, want in expected.items():
        if key not in meta:
            wrong.append(f"has no {key!r} in its meta, this run uses {_show(want)}")
        elif _canonical(meta[key]) != _canonical(want):
            wrong.append(f"was made with {key} {_show(meta[key])}, this run uses {_show(want)}")
    if wrong:
        raise CheckpointError(f"checkpoint {path} {'; and '.join(wrong)}")


def _canonical(value: Any) -> str:
    # Strict: 1, 1.0 and true are different values here, as they are in the JSON.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _show(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _unpickler_reason(error: Exception) -> str:
    """The refused-unpickling part of torch's many-line weights_only error (its first line
    suggests turning weights_only off: no advice to pass on), else the first line."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip().split(". ", 1)[0]
    return _one_line(text)


_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _one_line(error: BaseException | str, limit: int = 200) -> str:
    text = _TERMINAL_CODES.sub("", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = "".join(c if c.isprintable() else "?" for c in lines[0]) if lines else ""
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
