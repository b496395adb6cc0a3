"""Writing result files so that a reader, or a run killed halfway, never sees half a file; and
removing the temporary files that a killed writer left behind."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` and, when the block ends without an error, rename
    it over ``path``; on an error ``path`` is left as it was. The file gets the permissions a
    plain ``open`` would give (``mkstemp`` alone makes it private to its owner)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write JSON atomically: a reader never sees a half-written file."""
    with atomic_write(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")


def _writer_tag() -> str:
    return f"{socket.gethostname().replace('.', '-').replace('~', '-')}~{os.getpid()}~"


def temp_file(path: Path) -> tuple[int, str]:
    """An open temporary file beside ``path`` (same directory, so same file system: the rename
    over ``path`` is atomic), named after its writer so that one left by a killed writer can
    be told from one being written now."""
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_writer_tag()}",
                            suffix=".tmp")


def temp_dir(path: Path) -> Path:
    """A new temporary folder beside ``path``, named as :func:`temp_file` names files (renamed
    over ``path`` when complete; :func:`remove_stale_temps` removes one a killed writer left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{_writer_tag()}",
                                 suffix=".tmp"))


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of :func:`temp_file` in ``directory`` whose writer, a process
    on this host, is gone; return them."""
    host, removed = _writer_tag().split("~")[0], []
    for temp in Path(directory).glob(".*~*~*.tmp"):
        tag = temp.name.removesuffix(".tmp").rsplit(".", 1)[-1]
        temp_host, pid, _ = (tag.split("~") + ["", ""])[:3]
        if temp_host != host or not pid.isdigit() or process_alive(int(pid)):
            continue
        if temp.is_dir() and not temp.is_symlink():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
        removed.append(temp)
    if removed:
        log.info("Removed %d temporary file(s) left by a killed writer in %s", len(removed),
                 directory)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process of this machine with that pid runs (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
