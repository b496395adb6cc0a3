"""Decode FER2013 once into a uint8 array cache outside the (possibly read-only) data root."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ferlab.data.sources import FaceTable, locate

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the decoded content or the cache layout changes


def default_cache_dir() -> Path:
    """``$FERLAB_CACHE``, else ``$XDG_CACHE_HOME/ferlab``, else ``~/.cache/ferlab``."""
    if os.environ.get("FERLAB_CACHE"):
        return Path(os.environ["FERLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ferlab"


def load_faces(root: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> FaceTable:
    """All faces under ``root``, from the cache when the source is unchanged, else decoded."""
    source = locate(root)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = f"v{CACHE_VERSION}-{source.fingerprint()[:20]}"
    cache_file = cache_dir / f"fer2013-{source.kind}-{key}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as arrays:
                return FaceTable(**{name: arrays[name] for name in arrays.files})
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("Ignoring unreadable cache %s (%s); decoding again.", cache_file, err)

    log.info("Decoding FER2013 from %s (%s); cached afterwards in %s", source.path, source.kind,
             cache_dir)
    table = source.read()
    _write_atomically(cache_file, table)
    return table


def _write_atomically(cache_file: Path, table: FaceTable) -> None:
    """Write to a temporary file and rename, so a killed run never leaves a half-written cache."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, faces=table.faces, labels=table.labels, splits=table.splits,
                         sources=table.sources)
            os.replace(tmp, cache_file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        # The data is decoded and usable; only the next run pays the decoding again.
        log.warning("Could not write the FER2013 cache %s (%s); set FERLAB_CACHE or "
                    "data.cache_dir to a writable folder.", cache_file, err)
