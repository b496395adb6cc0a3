from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning import Callback
from omegaconf import DictConfig, open_dict

from ferlab.config import CONFIG_DIR, register_resolvers
from ferlab.data.cache import default_cache_dir
from tests.fer_fixtures import make_faces, write_fer2013_csv, write_image_folder

REAL_DATA = Path(os.environ.get("FERLAB_DATA", "data/fer2013"))
USER_CACHE = default_cache_dir()  # read before the autouse fixture redirects FERLAB_CACHE


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep decoded-data caches of synthetic fixtures out of the user's real cache."""
    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def faces():
    return make_faces()


@pytest.fixture(scope="session")
def csv_root(tmp_path_factory, faces) -> Path:
    root = tmp_path_factory.mktemp("fer_csv")
    write_fer2013_csv(root / "fer2013.csv", *faces)
    return root


@pytest.fixture(scope="session")
def icml_root(tmp_path_factory, faces) -> Path:
    root = tmp_path_factory.mktemp("fer_icml")
    write_fer2013_csv(root / "icml_face_data.csv", *faces, icml=True)
    return root


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory, faces) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("fer_folder"), *faces)


@pytest.fixture
def make_cfg(tmp_path, csv_root):
    """Compose conf/train.yaml as the CLI would, pointed at synthetic data and tmp_path."""

    def _make(overrides: list[str] = (), config_name: str = "train",
              output_dir: Path | None = None) -> DictConfig:
        register_resolvers()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name=config_name, return_hydra_config=True, overrides=[
                f"data.root={csv_root}", "data.batch_size=8", "data.eval_batch_size=16",
                "callbacks.progress_bar=null", "++trainer.enable_model_summary=false",
                "trainer.accelerator=cpu", *overrides,
            ])
        out = output_dir or tmp_path / "run"
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            cfg.hydra.runtime.output_dir = str(out)
            cfg.hydra.job.num = 0
        HydraConfig().set_config(cfg)
        return cfg

    yield _make
    GlobalHydra.instance().clear()


def real_data_available() -> bool:
    return (REAL_DATA / "train").is_dir() or any(
        (REAL_DATA / n).is_file() for n in ("fer2013.csv", "icml_face_data.csv"))


requires_real_data = pytest.mark.skipif(
    not real_data_available(),
    reason=f"FER2013 not found at {REAL_DATA.resolve()} (set FERLAB_DATA to the data root)",
)


TINY = {"_target_": "ferlab.models.VGG", "stages": [[4], [8]], "hidden": [16], "num_classes": 7}


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """An untrained tiny network saved as a ferlab model file (for inference plumbing)."""
    import torch

    from ferlab.data import EMOTIONS
    from ferlab.inference.model_file import save_model
    from ferlab.models import VGG

    torch.manual_seed(0)
    net = VGG(**{k: v for k, v in TINY.items() if k != "_target_"})
    return save_model(net, TINY, EMOTIONS, tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="session")
def portrait():
    """A real photograph shipped inside matplotlib (Grace Hopper), as RGB (600, 512, 3)."""
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return np.asarray(Image.open(handle).convert("RGB"))


def trained_module(path):
    """The LightningModule and run config of a checkpoint a test trained itself. ferlab never
    rebuilds a module from a file (its config could name any code); a test may, for its own."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ferlab.artifacts import CONFIG_KEY, find_checkpoint

    checkpoint = torch.load(find_checkpoint(path), weights_only=True)
    cfg = OmegaConf.create(checkpoint[CONFIG_KEY])
    module = instantiate(cfg.module, model=instantiate(cfg.model), teacher=None)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval(), cfg


def run_cli(args: list[str], tmp_path: Path, data: Path | None = None, module="ferlab.train",
            timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` as a user runs it, in tmp_path, on the given data root."""
    env = {**os.environ, "FERLAB_CACHE": str(tmp_path / "cache"), **(env or {})}
    if data is not None:
        env["FERLAB_DATA"] = str(data)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def doc_commands(page: str = "README.md", section: str | None = None) -> list[str]:
    """The shell commands of a page's ``bash`` blocks (of one ``## section``, or of the whole
    page), comments removed: what a test runs exactly as written."""
    text = (Path(__file__).resolve().parents[1] / page).read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0] if section else text
    commands = []
    for block in body.split("```bash\n")[1:]:
        for line in block.split("```", 1)[0].splitlines():
            if line.strip():
                commands.append(line.split("  #", 1)[0].strip())
    return commands


def short_cfg(make_cfg, out: Path, extra=()):
    """A three-epoch baseline run on the synthetic data, written to ``out``."""
    return make_cfg(["model=baseline", "trainer.max_epochs=3", "data.batch_size=4",
                     "trainer.log_every_n_steps=1", *extra], output_dir=out)


class CrashAfterFirstEpoch(Callback):
    """Stands in for a run killed after its first checkpoint."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")
