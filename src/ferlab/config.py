"""Where the Hydra configs live and the resolvers they use."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

# conf/ sits at the repository root, beside src/ (the project installs in editable mode).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def run_dir(resume: str | None, default: str) -> str:
    """The output directory of a run: the resumed run's own directory, else ``default``."""
    if resume is None:
        return default
    path = Path(resume)
    # a checkpoint file lives in <run dir>/checkpoints/
    return str(path.parent.parent if path.suffix == ".ckpt" else path)


def config_subdir(resume: str | None) -> str:
    """Hydra's record folder; a resumed run keeps the original run's record untouched."""
    if resume is None:
        return ".hydra"
    return f".hydra-resumed-{datetime.now():%Y-%m-%d_%H-%M-%S}"


def register_resolvers() -> None:
    """Register ferlab's OmegaConf resolvers (idempotent)."""
    for name, func in (("ferlab.run_dir", run_dir), ("ferlab.config_subdir", config_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, func)
