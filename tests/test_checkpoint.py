"""Checkpoints: what they restore and which files the loader refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ferlab import artifacts
from ferlab.data import EMOTIONS
from ferlab.train import train
from tests.conftest import short_cfg


def test_checkpoint_restores_model_and_config(make_cfg, tmp_path):
    out = tmp_path / "run"
    train(short_cfg(make_cfg, out, ["trainer.max_epochs=1", "test=false"]))
    loaded = artifacts.load(out)
    assert loaded.meta["model"]["_target_"] == "ferlab.models.VGG" and not loaded.network.training
    assert loaded.file == out / "checkpoints/last.ckpt" and loaded.classes == EMOTIONS
    state = torch.load(out / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    network = loaded.network.state_dict()
    assert all(torch.equal(v, network[k.removeprefix("model.")]) for k, v in state.items()
               if k.startswith("model."))


def test_loading_a_checkpoint_rejects_other_files(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        artifacts.load(tmp_path / "x.ckpt")
    torch.save({"state_dict": {}, "where": Path("elsewhere")}, tmp_path / "pickled.ckpt")
    with pytest.raises(ValueError, match="never unpickles") as refused:
        artifacts.load(tmp_path / "pickled.ckpt")
    assert "weights_only=False" not in str(refused.value)  # torch's advice, unsafe here
    torch.save({"state_dict": {}}, tmp_path / "y.ckpt")
    with pytest.raises(ValueError, match="not written by ferlab.train"):
        artifacts.load(tmp_path / "y.ckpt")
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        artifacts.load(tmp_path)



def test_a_full_disk_keeps_the_last_checkpoint_and_says_so_in_one_line(tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError (its zip writer's) chained to the
    OSError: the checkpoint writer turns it into one OSError that says what to do, and the
    checkpoint before it stays whole."""
    import errno

    import torch

    from ferlab import checkpoint as module
    from ferlab.checkpoint import AtomicCheckpointIO

    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)

    def full(obj, handle):
        handle.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos") \
                from err

    monkeypatch.setattr(module.torch, "save", full)
    with pytest.raises(OSError, match=r"cannot write the checkpoint .*last.ckpt \(No space left "
                                      r"on device\).*resume=.*run$") as failed:
        AtomicCheckpointIO().save_checkpoint({"epoch": 2}, path)
    assert failed.value.errno == errno.ENOSPC and "\n" not in str(failed.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left
