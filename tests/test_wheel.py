"""ferlab installed from a wheel (not the checkout) trains and evaluates: the configs ship in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout, unpacked as pip installs it (without dependencies:
    they are this environment's), in a folder that comes first on the path."""
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy: a build writes build/ and *.egg-info/ beside the sources
    source = out / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("src", "conf"):
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(out / "dist"), str(source)],
                           capture_output=True, text=True, timeout=600)
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (out / "dist").glob("ferlab-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert {"ferlab/conf/train.yaml", "ferlab/conf/experiment/vgg8_gap_mix.yaml"} <= set(names)
        assert "ferlab/weights/ferlab_fer2013.pt" in names and "ferlab/web/index.html" in names
        # every package of the checkout (pyproject lists them for the conf/ mapping)
        packages = {str(p.parent.relative_to(ROOT / "src")) for p in (ROOT / "src").rglob(
            "__init__.py")}
        assert packages <= {str(Path(n).parent) for n in names}, packages
        # every config of conf/
        configs = {f"ferlab/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob(
            "*.yaml")}
        assert configs <= set(names), configs - set(names)
    site = out / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=600)
    return site


def _run(args: list[str], cwd: Path, site: Path, data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "FERLAB_DATA": str(data),
           "FERLAB_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_a_wheel_install_trains_and_evaluates(installed, tmp_path, csv_root):
    where = _run(["-c", "import ferlab, ferlab.config as c; print(ferlab.__file__); "
                  "print(c.CONFIG_DIR)"], tmp_path, installed, csv_root)
    module, config_dir = where.stdout.split()
    assert Path(module).is_relative_to(installed) and Path(config_dir).is_relative_to(installed)
    # a recipe of conf/experiment, cut to one short epoch at full size
    trained = _run(["-m", "ferlab.train", "experiment=budget30_slim_lean", "trainer.max_epochs=1",
                    "trainer.limit_train_batches=2", "module.progressive_resize=null"],
                   tmp_path, installed, csv_root)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    [run] = (tmp_path / "runs/budget30_slim_lean").iterdir()
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
    evaluated = _run(["-m", "ferlab.evaluate", f"ckpt_path={run}", "splits=[test]",
                      f"output_dir={tmp_path / 'eval'}"], tmp_path, installed, csv_root)
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-2000:]
    assert "test" in json.loads((tmp_path / "eval/metrics.json").read_text())["datasets"]
