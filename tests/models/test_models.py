from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ferlab.config import CONFIG_DIR
from ferlab.models import VGG, fold_batch_norm

MODEL_CONFIGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))


def build(name: str, num_classes: int = 7, **overrides) -> torch.nn.Module:
    """Instantiate conf/model/<name>.yaml (following its defaults list) with num_classes."""
    def load(stem):
        cfg = OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{stem}.yaml")
        parents = [load(d) for d in cfg.pop("defaults", []) if d != "_self_"]
        return OmegaConf.merge(*parents, cfg)

    cfg = load(name)
    cfg.num_classes = num_classes
    cfg.pop("weights", None)  # where a run's weights start, not a network argument (training)
    return instantiate(OmegaConf.merge(cfg, overrides))


def test_every_expected_model_has_a_config():
    assert {"baseline", "vgg9"} <= set(MODEL_CONFIGS)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
@pytest.mark.parametrize("num_classes", [7, 6])
def test_model_shapes_and_gradients(name, num_classes):
    torch.manual_seed(0)
    model = build(name, num_classes)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        # timm zero-initialises each residual branch's last norm (so its convolutions get no
        # gradient at the very first step): the wiring is what is tested here
        torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = torch.randn(4, 1, 48, 48)
    out = model(x)
    assert out.shape == (4, num_classes)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0, f"{pname} received a zero gradient"


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_in_eval_mode_is_deterministic(name):
    model = build(name).eval()
    x = torch.randn(2, 1, 48, 48)
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_folding_batch_norm_keeps_the_outputs(name):
    torch.manual_seed(0)
    model = build(name)
    model(torch.randn(16, 1, 48, 48) * 3 + 1)  # training mode: running statistics move off 0/1
    model.eval()
    x = torch.randn(4, 1, 48, 48)
    expected = model(x)
    had_norms = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert had_norms == any(isinstance(m, torch.nn.Identity) for m in folded.modules())
    torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(build(name))


def test_baseline_is_three_convs_and_one_dense_layer():
    model = build("baseline")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    dense = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 3 and len(dense) == 2  # one hidden dense layer + the output layer
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_vgg9_structure_and_batch_norm_switch():
    model = build("vgg9")
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 9
    assert len(model.features) == 3  # three blocks, each ending in max-pooling
    assert all(isinstance(block[-1], torch.nn.MaxPool2d) for block in model.features)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    plain = build("vgg9", batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())


def test_dropout_is_a_parameter():
    model = build("vgg9", dropout=0.3)
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates == [0.3]


def test_gap_head_accepts_other_input_sizes():
    model = VGG(head="gap", hidden=[])
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("kwargs, match", [
    ({"stages": []}, "stages"),
    ({"head": "attention"}, "head"),
    ({"dropout": 1.0}, "dropout"),
    ({"stages": [[8]] * 7}, "fewer stages"),
])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VGG(**kwargs)
