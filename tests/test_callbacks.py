"""ferlab's callbacks in training runs: the weight EMA and validation at full size."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from ferlab import artifacts
from ferlab.train import train
from tests.conftest import short_cfg, trained_module


def test_ema_checkpoints_hold_the_averaged_weights_and_resume(make_cfg, tmp_path):
    out = tmp_path / "run"
    cfg = short_cfg(make_cfg, out, ["callbacks=ema", "callbacks.ema.decay=0.9", "test=false"])
    with open_dict(cfg):
        cfg.callbacks.progress_bar = None
        cfg.callbacks.crash = {"_target_": "tests.conftest.CrashAfterFirstEpoch"}
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    first = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    averaged, trained = first["state_dict"], first["current_model_state"]
    assert averaged.keys() == trained.keys()
    assert not all(torch.equal(averaged[k], trained[k]) for k in averaged)
    # evaluate / export / init_from read the averaged network
    network = artifacts.load(out / "checkpoints/last.ckpt").network.state_dict()
    assert all(torch.equal(v, network[k.removeprefix("model.")]) for k, v in averaged.items()
               if k.startswith("model."))

    cfg = short_cfg(make_cfg, out, ["callbacks=ema", "callbacks.ema.decay=0.9", "test=false",
                                     f"resume={out}"])
    with open_dict(cfg):
        cfg.callbacks.progress_bar = None
    metrics = train(cfg)
    last = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    assert metrics["epochs"] == 3 and last["global_step"] == 3 * first["global_step"]
    assert last["averaging_state"]["n_averaged"] == last["global_step"]


def test_ema_run_is_tested_on_the_averaged_weights(make_cfg, tmp_path):
    """The test after fit measures the best checkpoint's averaged network (what val chose,
    what evaluate and export read), not the trained weights stored beside it."""
    import lightning as L

    out = tmp_path / "run"
    metrics = train(short_cfg(make_cfg, out, ["callbacks=ema", "callbacks.ema.decay=0.5"]))
    best = Path(metrics["test/ckpt"])
    module, cfg = trained_module(best)

    def test_loss(state_dict) -> float:
        module.load_state_dict(state_dict)
        tester = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                           enable_model_summary=False)
        return tester.test(module, datamodule=instantiate(cfg.data), verbose=False)[0]["test/loss"]

    saved = torch.load(best, weights_only=True)
    averaged, trained = test_loss(saved["state_dict"]), test_loss(saved["current_model_state"])
    assert averaged != pytest.approx(trained, rel=1e-4)  # the two networks are told apart
    assert metrics["test/loss"] == pytest.approx(averaged, rel=1e-4)


def test_ema_resumes_runs_checkpointed_with_lightnings_own_callback():
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from ferlab.callbacks import EMA

    assert EMA(decay=0.9).state_key == EMAWeightAveraging(decay=0.9).state_key


def test_no_validation_while_training_on_small_faces(make_cfg, tmp_path, caplog):
    """Progressive resizing validates only at its last size; the run trains the same weights."""
    caplog.set_level(logging.INFO, logger="ferlab.callbacks")
    resize = ["model=vgg9_gap", "test=false", "module.progressive_resize=[[0,24],[2,48]]"]
    train(short_cfg(make_cfg, tmp_path / "run", resize))
    epochs = [line for line in caplog.messages if line.startswith("epoch ")]
    assert ["val/acc=" in line for line in epochs] == [False, False, True]
    names = sorted(p.name for p in (tmp_path / "run/checkpoints").glob("*.ckpt"))
    assert names[0].startswith("epoch002-") and names[1:] == ["last.ckpt"]
    train(short_cfg(make_cfg, tmp_path / "always", [*resize,
                                                     "callbacks.validate_at_full_size=null"]))
    skipped, validated = (torch.load(tmp_path / run / "checkpoints/last.ckpt",
                                     weights_only=True)["state_dict"] for run in ("run", "always"))
    assert all(torch.equal(skipped[k], validated[k]) for k in skipped)
    # early stopping acts on every epoch's val figures, so it keeps them
    caplog.clear()
    train(short_cfg(make_cfg, tmp_path / "stopping", [*resize, "callbacks=early_stopping"]))
    epochs = [line for line in caplog.messages if line.startswith("epoch ")]
    assert ["val/acc=" in line for line in epochs] == [True, True, True]

