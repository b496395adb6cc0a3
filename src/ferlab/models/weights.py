"""Initial weights from a file a user downloaded (``model.weights=<file>``): a timm or
torchvision state dict (``.pth``, ``.pt``, ``.bin``) or a ``.safetensors`` file.

Keys are matched by name (wrapper prefixes such as ``module.`` in the file and ``body.`` in the
network tried both ways, the mapping that matches most kept) and loaded where the shapes agree;
a convolution whose input channels differ (an RGB stem for grey faces) is adapted as timm does it,
by summing its filters over the channels; everything else (an ImageNet classifier for seven
emotions) keeps its fresh initialisation. What loaded is logged, and a file that matches nothing
is refused. The file is read as data only (``torch.load(weights_only=True)`` or safetensors)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# prefixes that wrappers put before a network's own keys: in files (DDP, Lightning, backbones)
# and in ferlab's networks (TimmNetwork keeps timm's under body.)
FILE_PREFIXES = ("", "module.", "model.", "backbone.", "state_dict.")
NETWORK_PREFIXES = ("", "body.", "model.")
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


@dataclass
class WeightsReport:
    """What :func:`load_weights` did with each tensor."""

    file: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)   # input channels summed or repeated
    mismatched: list[str] = field(default_factory=list)  # in both, shapes differ: not loaded
    unused: list[str] = field(default_factory=list)  # in the file only
    missing: list[str] = field(default_factory=list)  # in the network only: as initialised

    def summary(self) -> str:
        lines = [f"model.weights={self.file}: loaded {len(self.loaded)} of "
                 f"{len(self.loaded) + len(self.mismatched) + len(self.missing)} tensors"]
        for what, keys in (("input channels adapted (filters summed/repeated)", self.adapted),
                           ("not loaded, shapes differ", self.mismatched),
                           ("left as initialised (not in the file)", self.missing),
                           ("in the file, not in the network", self.unused)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8
                                               else "")
                lines.append(f"  {what}: {shown}")
        return "\n".join(lines)


def read_state_dict(file: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The named tensors of a weights file (unwrapping ``{"state_dict": ...}`` and the like)."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.weights={file}: no such file. Give the path of a state "
                                f"dict ({', '.join(WEIGHT_SUFFIXES)}) you have downloaded; "
                                "ferlab never downloads weights.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"model.weights={file} is not a readable safetensors file "
                             f"({err}).") from err
    else:
        from ferlab.artifacts import read_torch_file

        state = read_torch_file(path, "weights file")
        for key in ("state_dict", "model", "module", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ValueError(f"model.weights={file} holds a {type(state).__name__}, not a state dict "
                         "(a dict of named tensors).")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"model.weights={file} holds no named tensors; it is not a state dict.")
    return tensors


def load_weights(network: nn.Module, file: str | os.PathLike) -> WeightsReport:
    """Load what fits of ``file`` into ``network`` (in place) and say what loaded."""
    given = read_state_dict(file)
    own = network.state_dict()
    mapping = max((_mapping(given, own, strip, add) for strip in FILE_PREFIXES
                   for add in NETWORK_PREFIXES), key=len)
    report = WeightsReport(str(file))
    state = dict(own)
    for theirs, mine in sorted(mapping.items(), key=lambda kv: kv[1]):
        value, target = given[theirs], own[mine]
        if value.shape == target.shape:
            state[mine] = value.to(target.dtype)
            report.loaded.append(mine)
        elif _is_input_conv(value, target):
            from timm.models import adapt_input_conv

            state[mine] = adapt_input_conv(target.shape[1], value.float()).to(target.dtype)
            report.loaded.append(mine)
            report.adapted.append(f"{mine} ({value.shape[1]} -> {target.shape[1]})")
        else:
            report.mismatched.append(f"{mine} ({_shape(value)} -> {_shape(target)})")
    report.unused = sorted(set(given) - set(mapping))
    report.missing = sorted(set(own) - set(mapping.values()))
    if not report.loaded:
        raise ValueError(
            f"model.weights={file}: none of its {len(given)} tensors fits this network (e.g. "
            f"{next(iter(given))} in the file, {next(iter(own))} in the network). Is it the "
            "weights of this architecture (model.name)?")
    network.load_state_dict(state)
    log.info("%s", report.summary())
    return report


def _mapping(given: dict, own: dict, strip: str, add: str) -> dict[str, str]:
    """File key -> network key, for the keys that carry ``strip`` and match with ``add``."""
    return {key: add + key[len(strip):] for key in given
            if key.startswith(strip) and add + key[len(strip):] in own}


def _is_input_conv(value: torch.Tensor, target: torch.Tensor) -> bool:
    """A convolution weight that differs only in its input channels, 1 <-> 3 (a stem)."""
    return (value.ndim == target.ndim == 4 and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:] and {value.shape[1], target.shape[1]} <= {1, 3}
            and value.shape[1] != target.shape[1])


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"
