"""Atomic file writes: a file is either its old content or its complete new content, never a part.

Each write goes to a temporary file next to the target (unique per process and thread, so two
writers never share one), is flushed to disk, then ``os.replace``s the target — as PyTorch
Lightning's ``_atomic_save`` and fsspec's transactions do.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from das_tune.errors import RunFailure, UserError

FILE_MODE, FOLDER_MODE = 0o666, 0o777  # before the user's umask, as open() and mkdir() create them


def umask() -> int:
    """The process's umask: Linux reports it in /proc; elsewhere it is read by setting a strict one for an instant
    and putting it back (a file another thread creates meanwhile is then too private, never too open)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def share_like_created(folder: Path) -> None:
    """``folder`` (made by mkdtemp: 0700) and everything in it get the modes a plain mkdir and open would have
    given them under the user's umask, so that a folder moved into place is as readable as any other."""
    mask = umask()
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (FOLDER_MODE if path.is_dir() else FILE_MODE) & ~mask)


def write_with(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` writes the file at ``tmp``; then it becomes ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with space_named(path):
            write(tmp)
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE & ~umask())  # mkstemp's 0600 would survive the rename
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def space_named(path: Path) -> Iterator[None]:
    """Inside, a write that runs out of room raises the file system's own error naming ``path`` (not a temporary
    file), also when a library wrapped it in an error of its own."""
    try:
        yield
    except Exception as error:
        if not out_of_space(error):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None


def out_of_space(error: BaseException | None) -> bool:
    """Whether ``error`` or one it was raised from is a full disk or quota. torch's writer keeps the OSError of the
    Python file it wrote to as its context; safetensors' Rust writer says it only in its text."""
    while error is not None:
        if (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or "(os error 28)" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def write_text(path: Path, text: str) -> None:
    write_with(path, lambda tmp: tmp.write_text(text))


def write_json_data(data: Any, path: Path) -> None:
    """Plain data as JSON, without NaN/inf (which is not JSON); typed results: ``results.write_json``."""
    check_finite(data, Path(path).name)
    write_text(path, json.dumps(data, indent=2) + "\n")


def sha256_of(path: Path) -> str:
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_checksums(folder: Path, checksums: dict[str, str], recorded_in: str, way_out: str) -> None:
    """Each file named in ``checksums`` that is in ``folder`` still has the sha256 recorded when it was written."""
    for name, digest in checksums.items():
        path = folder / name
        if path.is_file() and sha256_of(path) != digest:
            raise UserError(f"{path}: damaged or changed since it was written (its sha256 is not the one {recorded_in} records); {way_out}")


def check_finite(data: Any, name: str) -> None:
    """A non-finite number in a result is a failure of the run that made it, not a value to write."""
    bad = _non_finite(data)
    if bad:
        raise RunFailure(f"{name} would hold a non-finite number ({bad}): the run diverged; nothing was written")


def _non_finite(data: Any, where: str = "") -> str | None:
    if isinstance(data, float) and not math.isfinite(data):
        return f"{where or 'value'} = {data}"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None
