"""Runs as files: the resolved config inside each checkpoint, and restoring a model from it."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf

from ferlab.files import atomic_write
from ferlab.module import EmotionModule

CONFIG_KEY = "ferlab_config"
RANDOM_STATE_KEY = "ferlab_random_state"

log = logging.getLogger(__name__)


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


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory's ``checkpoints/last.ckpt``."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = path / "checkpoints" / "last.ckpt"
        if not candidate.is_file():
            raise FileNotFoundError(f"{path} is a directory without checkpoints/last.ckpt; pass a "
                                    "run directory written by ferlab.train or a .ckpt file.")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}; pass a .ckpt file or a run directory.")
    return path


# what torch.load raises on a file that is not a PyTorch file (or a truncated one)
UNREADABLE = (RuntimeError, EOFError, OSError, KeyError, ValueError, pickle.UnpicklingError)


def read_torch_file(file: Path, what: str = "PyTorch file",
                    map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` (no unpickling of code) with a clear error."""
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # torch's own text advises weights_only=False: not here
        raise ValueError(f"{file} is not a readable {what}: it is not a PyTorch file, or it holds "
                         "Python objects besides tensors, which ferlab never unpickles (files "
                         "from ferlab.train and ferlab.export hold none).") from err
    except UNREADABLE as err:
        raise ValueError(f"{file} is not a readable {what} ({type(err).__name__}: {err}).") from err


def load_checkpoint(path: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> tuple[EmotionModule, DictConfig]:
    """Rebuild the trained module and its run config from a ferlab checkpoint (no unpickling)."""
    file = find_checkpoint(path)
    checkpoint = read_torch_file(file, "PyTorch checkpoint", map_location)
    if CONFIG_KEY not in checkpoint:
        raise ValueError(f"{file} holds no ferlab config (key {CONFIG_KEY!r}); it was not written "
                         "by ferlab.train.")
    cfg = OmegaConf.create(checkpoint[CONFIG_KEY])
    # a distillation teacher only matters while training
    module = instantiate(cfg.module, model=instantiate(cfg.model), teacher=None)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval(), cfg


def load_network_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The network weights and network config of a ferlab checkpoint, run directory (its
    ``last.ckpt``) or exported model file, for starting a new run from them."""
    file = find_checkpoint(path)
    payload = read_torch_file(file)
    if isinstance(payload, dict) and CONFIG_KEY in payload:  # a training checkpoint
        weights = {k.removeprefix("model."): v for k, v in payload["state_dict"].items()
                   if k.startswith("model.")}
        return weights, payload[CONFIG_KEY]["model"]
    if isinstance(payload, dict) and str(payload.get("format", "")).startswith("ferlab-model/"):
        return payload["state_dict"], payload["model"]
    raise ValueError(f"{file} is neither a ferlab checkpoint nor a ferlab model file; pass a .ckpt "
                     "or run directory written by ferlab.train, or a file from ferlab.export.")


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write JSON atomically: a reader never sees a half-written file."""
    with atomic_write(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
