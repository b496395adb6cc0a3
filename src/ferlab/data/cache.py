"""Decode a data set once into a uint8 array cache outside the (possibly read-only) data root."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from ferlab.data.sources import FaceTable, locate
from ferlab.files import atomic_write, remove_stale_temps, temp_dir

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the decoded content or the cache layout changes
T = TypeVar("T")


class Source(Protocol):
    """A data set on disk: its layout, its folder, a content key and a reader."""

    kind: str
    path: Path

    def fingerprint(self) -> str: ...

    def read(self) -> Any: ...


def default_cache_dir() -> Path:
    """``$FERLAB_CACHE``, else ``$XDG_CACHE_HOME/ferlab``, else ``~/.cache/ferlab``."""
    if os.environ.get("FERLAB_CACHE"):
        return Path(os.environ["FERLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ferlab"


def load_faces(root: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> FaceTable:
    """All FER2013 faces under ``root``, from the cache when the source is unchanged, else
    decoded."""
    return load_cached(locate(root), FaceTable, "fer2013", "FER2013", cache_dir)


def load_cached(source: Source, table_type: type[T], name: str, title: str,
                cache_dir: str | os.PathLike | None = None) -> T:
    """The table ``source.read()`` gives (a dataclass of arrays), from the cache when the source
    is unchanged, else read and cached. ``name`` prefixes the cache files, ``title`` the log."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # one cache per source path; its content key changes when a file's size or mtime does
    prefix = f"{name}-{source.kind}-{_path_key(source.path)}-"
    cache_file = cache_dir / f"{prefix}v{CACHE_VERSION}-{source.fingerprint()[:20]}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as arrays:
                return table_type(**{field: arrays[field] for field in arrays.files})
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("Ignoring unreadable cache %s (%s); decoding again.", cache_file, err)

    log.info("Decoding %s from %s (%s); cached afterwards in %s", title, source.path,
             source.kind, cache_dir)
    table = source.read()
    if _write_atomically(cache_file, table, title):
        _remove_stale(cache_file, prefix, title)
    return table


class ArrayStore:
    """Where a source being cached writes its arrays: ``.npy`` files in a folder, so that the
    cache is read memory-mapped and a set larger than memory never has to be in it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def empty(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A writable array of that shape, on disk."""
        return np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=dtype,
                                         shape=shape)

    def put(self, name: str, array: np.ndarray) -> None:
        np.save(self.folder / f"{name}.npy", np.asarray(array), allow_pickle=False)


class MappedSource(Source, Protocol):
    def read_into(self, store: ArrayStore) -> dict[str, np.ndarray]: ...


def load_mapped(source: MappedSource, table_type: type[T], name: str, title: str,
                cache_dir: str | os.PathLike | None = None, retry: bool = True) -> T:
    """Like :func:`load_cached` for sets that may not fit in memory: ``source.read_into(store)``
    writes the arrays into a cache folder, which every run then reads memory-mapped."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    prefix = f"{name}-{source.kind}-{_path_key(source.path)}-"
    folder = cache_dir / f"{prefix}v{CACHE_VERSION}-{source.fingerprint()[:20]}"
    if not folder.is_dir():
        log.info("Decoding %s from %s (%s) into the cache %s", title, source.path, source.kind,
                 folder)
        cache_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(cache_dir)  # a decode killed halfway left its folder
        scratch = temp_dir(folder)
        try:
            arrays = source.read_into(ArrayStore(scratch))
            for field, array in arrays.items():
                if not (scratch / f"{field}.npy").is_file():
                    ArrayStore(scratch).put(field, array)
            del arrays  # the memory maps close before the folder moves
            scratch.rename(folder)
        except OSError as err:
            if not folder.is_dir():  # (another process may have written it meanwhile)
                raise OSError(f"Could not write the {title} cache {folder} ({err}); set "
                              "FERLAB_CACHE or data.cache_dir to a writable folder with room "
                              "for the faces (48 x 48 bytes each).") from err
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)
        _remove_stale(folder, prefix, title)
    try:
        arrays = {f.stem: np.load(f, mmap_mode="r", allow_pickle=False)
                  for f in sorted(folder.glob("*.npy"))}
        return table_type(**arrays)
    except (OSError, ValueError, TypeError) as err:
        if not retry:
            raise OSError(f"The {title} cache {folder} cannot be read ({err}) even after "
                          "decoding again; remove it and check the disk.") from err
        log.warning("Ignoring the damaged cache %s (%s); decoding again.", folder, err)
        shutil.rmtree(folder, ignore_errors=True)
        return load_mapped(source, table_type, name, title, cache_dir, retry=False)


def _path_key(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]


def _remove_stale(cache_file: Path, prefix: str, title: str) -> None:
    """Delete the caches of earlier states of the same source (each a copy of the dataset,
    88 MB for FER2013), so that touching or copying the data does not fill the disk."""
    for stale in cache_file.parent.glob(f"{prefix}*"):
        if stale != cache_file:
            try:
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
                log.info("Removed the stale %s cache %s", title, stale)
            except OSError as err:
                log.warning("Could not remove the stale %s cache %s (%s)", title, stale, err)


def _write_atomically(cache_file: Path, table: Any, title: str) -> bool:
    """Write to a temporary file and rename, so a killed run never leaves a half-written cache;
    whether the cache was written."""
    try:
        if cache_file.parent.is_dir():  # a decode killed halfway left its temporary file
            remove_stale_temps(cache_file.parent)
        with atomic_write(cache_file, "wb") as handle:
            np.savez(handle, **{f.name: getattr(table, f.name) for f in fields(table)})
    except OSError as err:
        # The data is decoded and usable; only the next run pays the decoding again.
        log.warning("Could not write the %s cache %s (%s); set FERLAB_CACHE or "
                    "data.cache_dir to a writable folder.", title, cache_file, err)
        return False
    return True
