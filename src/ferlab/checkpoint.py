"""What ferlab.train adds to every checkpoint: the run's resolved config and the random state.

Reading checkpoints back (and any other model file) is :mod:`ferlab.artifacts`' job."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf

from ferlab.artifacts import CONFIG_KEY
from ferlab.files import atomic_write

RANDOM_STATE_KEY = "ferlab_random_state"

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all: into a temporary file in the checkpoint's own
    directory, flushed to disk, then renamed over the old one. A kill at any moment leaves the
    previous checkpoint or the new one. (Lightning's own writer goes through a temporary file in
    $TMPDIR; where that is another file system, the final move is a copy that a kill cuts.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options; got "
                            f"{storage_options!r}.")
        try:
            with atomic_write(path, "wb") as handle:
                torch.save(checkpoint, handle)
        except (OSError, RuntimeError) as err:  # torch.save wraps a full disk in RuntimeError
            cause = _os_error(err)
            if cause is None:
                raise
            run = Path(path).parent.parent
            raise OSError(cause.errno, f"cannot write the checkpoint {path} ({cause.strerror}); "
                          "the last whole checkpoint before it is kept. Free space (or fix the "
                          f"folder) and continue with resume={run}") from err


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind an exception, following its causes and contexts."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


class ConfigInCheckpoint(L.Callback):
    """Stores the run's resolved config in every checkpoint, so a checkpoint restores alone."""

    def __init__(self, cfg: DictConfig) -> None:
        self.config = OmegaConf.to_container(cfg, resolve=True)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config


class RandomStateInCheckpoint(L.Callback):
    """Stores the global random state (torch, CUDA, numpy, Python) in every checkpoint and
    restores it on resume, so a resumed run draws the shuffling and augmentation that the run
    would have drawn without the cut. Without it every sitting starts again from ``seed``, and
    its first epoch repeats the first epoch of the sitting before (same order, same
    augmentations). Stored as tensors and lists, which ``torch.load(weights_only=True)`` reads.
    Lightning runs the sanity check inside ``isolate_rng``, so it does not move the state.
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[RANDOM_STATE_KEY] = _random_state()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # testing a checkpoint: nothing to go on with
            return
        state = checkpoint.get(RANDOM_STATE_KEY)
        if state is None:
            log.warning("The checkpoint holds no random state (written before ferlab stored it): "
                        "the resumed run draws its shuffling and augmentation afresh from seed, "
                        "not as an uninterrupted run would.")
            return
        _set_random_state(state)


def _random_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": [version, list(mt), gauss]}


def _set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    elif cuda or torch.cuda.is_available():
        log.warning("The checkpoint's CUDA random state (%d devices) does not fit this machine "
                    "(%d): the resumed run draws on the GPU afresh.", len(cuda),
                    torch.cuda.device_count() if torch.cuda.is_available() else 0)
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
