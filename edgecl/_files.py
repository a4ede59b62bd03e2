"""Files that a crash never leaves half written, and early checks that outputs can be written.

Every file edgecl writes whole (the JSON report, ONNX models, saved backbones) goes through
:func:`atomic_path`: the writer fills a new temporary file next to the target, which is
fsynced and renamed over it, so a power cut leaves the old file or the new one, never half.
The temporary file is created with mode 0o666 filtered by the process umask, as ``open()``
creates files (``tempfile.mkstemp`` would force 0o600, unreadable to the group that serves
the reports); checkpoint files are made with ``open(..., "xb")`` and get the same modes.

Imports nothing heavy: the CLI uses it before torch is loaded.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from edgecl.errors import UsageError

_NEW_FILE = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new, empty temporary file next to ``path`` for the caller to write (by name);
    when the block succeeds it is made durable and renamed to ``path``, else deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, _NEW_FILE, 0o666))  # 0o666 & ~umask, as open() would make it
    try:
        yield tmp
        _fsync_file(tmp)  # the data is on disk before the new name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` durable (POSIX; Windows cannot open a
    directory, and NTFS journals its renames)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)  # writable: Windows' fsync needs it
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- early checks -----------------------------------------------------------------------------
def check_writable_directory(path: str | os.PathLike[str], flag: str) -> None:
    """Create directory ``path`` if needed and write and remove a probe file in it, so that
    a run learns for minutes only if it can save; UsageError naming ``flag``, the path and
    the reason otherwise."""
    path = Path(path)
    _make_directory(path, flag, path)
    _probe(path, flag, path)


def check_writable_file(path: str | os.PathLike[str], flag: str) -> None:
    """Check that file ``path`` can be written later: it is not a directory, and its
    directory exists (or is created now) and takes a new file. UsageError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a file name")
    parent = path.parent
    _make_directory(parent, flag, path)
    _probe(parent, flag, path)


def _make_directory(directory: Path, flag: str, named: Path) -> None:
    if directory.is_dir():
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{flag} {named}: {directory} exists and is not a directory") from None
    except OSError as error:
        raise UsageError(f"{flag} {named}: cannot create directory {directory}: "
                         f"{error.strerror or error}") from None


def _probe(directory: Path, flag: str, named: Path) -> None:
    probe = directory / f".edgecl-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, _NEW_FILE, 0o666)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as error:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise UsageError(f"{flag} {named}: cannot write in {directory}: "
                         f"{error.strerror or error}") from None
