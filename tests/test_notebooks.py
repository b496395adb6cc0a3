"""The notebooks run top to bottom on tiny data, so they cannot rot; they are stored clean."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ferlab.train import train

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name: str, env: dict[str, str], cwd: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return notebook


@pytest.mark.parametrize("name", ["explore_fer2013.ipynb", "results.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count")
               for c in notebook.cells if c.cell_type == "code")


def test_explore_notebook_runs(csv_root, tmp_path):
    notebook = _execute("explore_fer2013.ipynb", {"FERLAB_DATA": str(csv_root)}, tmp_path)
    outputs = "".join(str(o) for c in notebook.cells for o in c.get("outputs", []))
    assert "duplicate groups" in outputs and "image/png" in outputs


def test_results_notebook_runs(make_cfg, tmp_path, csv_root, monkeypatch):
    """As the docs say to run it, from notebooks/ with no settings: it finds the repository's
    runs/ and the latest report under runs/eval/<time>/, where evaluate writes."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.config import CONFIG_DIR
    from ferlab.evaluate import evaluate

    runs = tmp_path / "runs"
    train(make_cfg(["model=baseline", "trainer.max_epochs=1", "module/scheduler=none"],
                   output_dir=runs / "baseline"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={runs / 'baseline'}", "device=cpu",
                                         f"data_root={csv_root}",
                                         f"output_dir={runs / 'eval/2026-01-01_00-00-00'}"])
    evaluate(cfg)
    # what a command line records (train(cfg) called directly writes no Hydra record)
    (runs / "baseline/.hydra").mkdir()
    (runs / "baseline/.hydra/overrides.yaml").write_text("- model=baseline\n- model.dropout=0.3\n")
    monkeypatch.delenv("FERLAB_RUNS", raising=False)
    monkeypatch.delenv("FERLAB_REPORT", raising=False)
    (tmp_path / "notebooks").mkdir()
    notebook = _execute("results.ipynb", {}, tmp_path / "notebooks")
    outputs = "".join(str(o) for c in notebook.cells for o in c.get("outputs", []))
    assert "val/acc_best" in outputs and "image/png" in outputs
    assert "model=baseline model.dropout=0.3" in outputs  # the values a sweep job was given
