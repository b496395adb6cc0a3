"""ferlab.artifacts: every way in for a model file, and files crafted to run code through them."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ferlab import artifacts
from ferlab.artifacts import CONFIG_KEY, UnsafeArtifactError
from ferlab.config import CONFIG_DIR, with_run_overrides
from ferlab.data import EMOTIONS
from ferlab.inference.model_file import save_model
from ferlab.inference.recognizer import EmotionRecognizer
from ferlab.models import VGG
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _tiny_network() -> VGG:
    torch.manual_seed(0)
    return VGG(**{k: v for k, v in TINY.items() if k != "_target_"})


def _checkpoint(network: VGG) -> dict:
    """A checkpoint as ferlab.train writes it (the keys a loader reads), made of plain types."""
    return {
        "epoch": 0, "global_step": 1, "state_dict": {f"model.{k}": v for k, v in
                                                     network.state_dict().items()},
        CONFIG_KEY: {
            "name": "tiny", "seed": 1, "trainer": {"_target_": "lightning.pytorch.Trainer",
                                                   "max_epochs": 1},
            "model": dict(TINY),
            "module": {"_target_": "ferlab.module.EmotionModule", "num_classes": 7,
                       "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}},
            "data": {"_target_": "ferlab.data.FER2013DataModule", "num_classes": 7,
                     "augment": {"_target_": "ferlab.data.BatchAugment"}},
        },
    }


class Attack:
    """A callable a crafted file names, with the arguments that would leave a trace in ``where``,
    and how to tell whether it acted."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.victim = where / "victim"
        self.victim.mkdir(parents=True, exist_ok=True)
        (self.victim / "keep.txt").write_text("data")
        out = str(where / "pwned")
        self.calls = {
            "io.open": {"_target_": "io.open", "file": out, "mode": "w"},
            "os.makedirs": {"_target_": "os.makedirs", "name": out},
            "pathlib.Path.write_text": {"_target_": "pathlib.Path.write_text",
                                        "_args_": [out, "x"]},
            "shutil.rmtree": {"_target_": "shutil.rmtree", "path": str(self.victim)},
            "builtins.exec": {"_target_": "builtins.exec", "_args_": [f"open({out!r}, 'w')"]},
            # a ferlab function that writes files: "anything under ferlab." is not enough
            "ferlab.files.write_json": {"_target_": "ferlab.files.write_json", "path": out,
                                        "payload": {}},
            # harmless-looking, but not a class ferlab's configs name
            "torch.nn.Linear": {"_target_": "torch.nn.Linear", "in_features": 1,
                                "out_features": 1},
        }

    def acted(self) -> bool:
        return (self.where / "pwned").exists() or not (self.victim / "keep.txt").is_file()


# where in a stored config the crafted target goes: the network, the module, the data; top level
# and nested
PLACES = {
    "network": lambda cfg, call: cfg["model"].update(call),
    "network nested": lambda cfg, call: cfg["model"].update(hidden=[call]),
    "module": lambda cfg, call: cfg["module"].update(call),
    "module nested": lambda cfg, call: cfg["module"].update(optimizer=call),
    "data": lambda cfg, call: cfg["data"].update(call),
    "data nested": lambda cfg, call: cfg["data"].update(augment={"steps": [call]}),
}


def _crafted_checkpoint(path: Path, call: dict, place: str) -> Path:
    checkpoint = _checkpoint(_tiny_network())
    PLACES[place](checkpoint[CONFIG_KEY], copy.deepcopy(call))
    torch.save(checkpoint, path)
    return path


def _crafted_model_file(path: Path, call: dict, place: str) -> Path:
    save_model(_tiny_network(), dict(TINY), EMOTIONS, path)
    payload = torch.load(path, weights_only=True)
    config = {"model": payload["model"], "module": {}, "data": {}}
    PLACES[place](config, copy.deepcopy(call))
    payload["model"] = config["model"]
    payload.update({k: v for k, v in config.items() if k != "model" and v})
    torch.save(payload, path)
    return path


def test_every_crafted_target_is_refused_before_anything_runs(tmp_path):
    attack = Attack(tmp_path)
    for name, call in attack.calls.items():
        for place in PLACES:
            for craft in (_crafted_checkpoint, _crafted_model_file):
                suffix = ".ckpt" if craft is _crafted_checkpoint else ".pt"
                file = craft(tmp_path / f"crafted{suffix}", call, place)
                with pytest.raises(UnsafeArtifactError, match=f"names '{name}' at ") as refused:
                    artifacts.load(file)
                assert str(file) in str(refused.value)
                with pytest.raises(UnsafeArtifactError):
                    artifacts.read_network_weights(file)
                assert not attack.acted(), (name, place, craft.__name__)


def test_real_files_still_load(tmp_path):
    """Both formats as ferlab writes them, and as earlier versions wrote them (a module config
    with options that are gone, such as tta), load with their weights."""
    network = _tiny_network()
    checkpoint = _checkpoint(network)
    checkpoint[CONFIG_KEY]["module"]["tta"] = "flip"  # EmotionModule(tta=...), since removed
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = artifacts.load(tmp_path / "old.ckpt")
    assert loaded.classes == EMOTIONS and loaded.meta["recipe"]["name"] == "tiny"
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded.network(x), network.eval()(x))
    path = save_model(network, dict(TINY), EMOTIONS, tmp_path / "m.pt", tta="flip")
    loaded = artifacts.load(path)
    assert loaded.meta["tta"] == "flip" and loaded.meta["format"] == "ferlab-model/1"
    for name in artifacts.SHIPPED_MODELS:
        if artifacts.shipped_model_path(name).is_file():
            assert artifacts.load(name).classes == EMOTIONS


def test_the_allow_list_is_what_ferlabs_configs_name():
    named = set()
    # conf/hydra and the searches configure Hydra itself, which no file from elsewhere can set
    for file in Path(CONFIG_DIR).rglob("*.yaml"):
        if file.relative_to(CONFIG_DIR).parts[0] in ("hydra", "hparams_search"):
            continue
        named |= {t for _, t in artifacts.targets(yaml.safe_load(file.read_text()) or {})}
    assert named == set(artifacts.CONFIG_TARGETS)
    assert artifacts.network_targets() == {"ferlab.models.VGG", "ferlab.models.vgg.VGG"}


def test_weights_that_do_not_fit_their_network_are_explained(tmp_path):
    checkpoint = _checkpoint(_tiny_network())
    checkpoint[CONFIG_KEY]["model"]["hidden"] = [32]
    torch.save(checkpoint, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match=r"x.ckpt: its weights do not fit the network"):
        artifacts.load(tmp_path / "x.ckpt")


# --- every entry point refuses a crafted file ---------------------------------------------------

CRAFTED = [("io.open", "network", _crafted_checkpoint), ("builtins.exec", "module nested",
                                                         _crafted_checkpoint),
           ("shutil.rmtree", "data", _crafted_checkpoint),
           ("os.makedirs", "network nested", _crafted_model_file),
           ("ferlab.files.write_json", "network", _crafted_model_file)]


CRAFTED_IDS = [f"{n}-{p}-{c.__name__[9:]}" for n, p, c in CRAFTED]


def _craft(tmp_path: Path, name: str, place: str, craft) -> tuple[Path, str, Attack]:
    attack = Attack(tmp_path / "attack")
    suffix = ".ckpt" if craft is _crafted_checkpoint else ".pt"
    return craft(tmp_path / f"crafted{suffix}", attack.calls[name], place), name, attack


@pytest.fixture(params=CRAFTED, ids=CRAFTED_IDS)
def crafted(request, tmp_path):
    return _craft(tmp_path, *request.param)


def test_recognizer_export_and_predict_refuse_it(crafted, tmp_path, portrait, capsys):
    from ferlab.export import main as export_main
    from ferlab.predict import main as predict_main

    file, name, attack = crafted
    with pytest.raises(UnsafeArtifactError, match=name):
        EmotionRecognizer(file)
    assert export_main([str(file), str(tmp_path / "out.pt")]) == 2
    assert not (tmp_path / "out.pt").exists()
    from PIL import Image

    Image.fromarray(portrait).save(tmp_path / "photo.png")
    assert predict_main(["--model", str(file), str(tmp_path / "photo.png")]) == 2
    assert f"names '{name}'" in capsys.readouterr().err
    assert not attack.acted()


def test_evaluate_refuses_it(crafted, tmp_path, csv_root):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.evaluate import evaluate

    file, name, attack = crafted
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={file}", f"data_root={csv_root}",
                                         f"output_dir={tmp_path / 'ev'}", "device=cpu"])
    GlobalHydra.instance().clear()
    with pytest.raises(UnsafeArtifactError, match=name):
        evaluate(cfg)
    assert not attack.acted() and not (tmp_path / "ev").exists()


# resume= takes checkpoints and run directories, the other two model files as well
@pytest.mark.parametrize("key, crafting", [
    (key, c) for key in ("init_from", "module.teacher", "resume") for c in CRAFTED
    if key != "resume" or c[2] is _crafted_checkpoint])
def test_training_refuses_it(make_cfg, tmp_path, key, crafting):
    from ferlab.train import train

    file, name, attack = _craft(tmp_path, *crafting)
    run = tmp_path / "run"
    if key == "resume":  # a run directory whose last.ckpt is the crafted file
        (run / "checkpoints").mkdir(parents=True)
        file = file.rename(run / "checkpoints" / "last.ckpt")
    cfg = make_cfg(["model=baseline", "trainer.max_epochs=1", "test=false", f"{key}={file}"],
                   output_dir=run)
    with pytest.raises(UnsafeArtifactError, match=name):
        train(cfg)
    assert not attack.acted()
    # nothing but the lock the refused run took on its directory
    assert sorted(p.name for p in run.rglob("*")) == (
        [".ferlab.lock", "checkpoints", "last.ckpt"] if key == "resume" else [".ferlab.lock"])


def test_resume_refuses_a_crafted_overrides_record(tmp_path, csv_root):
    """A run directory's recorded overrides are replayed by resume=: one that names code outside
    the allow-list stops the command before Hydra runs, and nothing is written."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(_checkpoint(_tiny_network()), run / "checkpoints" / "last.ckpt")
    (run / ".hydra").mkdir()
    pwned = tmp_path / "pwned"
    crafted = f"+callbacks.x={{_target_: io.open, file: {pwned}, mode: w}}"
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model=baseline", crafted]))
    before = sorted(run.rglob("*"))
    with pytest.raises(ValueError, match=r"records the override .*names 'io.open'"):
        with_run_overrides([f"resume={run}"])
    result = subprocess.run([sys.executable, "-m", "ferlab.train", f"resume={run}",
                             f"data.root={csv_root}"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0 and "names 'io.open'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not pwned.exists() and sorted(run.rglob("*")) == before
    # what the user types replaces the record's override of the same key, which is then not
    # replayed (nor refused)
    args = with_run_overrides([f"resume={run}", "+callbacks.x=null"])
    assert args == ["model=baseline", f"resume={run}", "+callbacks.x=null"]


def test_inference_needs_no_training_stack():
    code = ("import sys, numpy as np, ferlab\n"
            "r = ferlab.EmotionRecognizer()\n"
            "r.analyze(np.zeros((64, 64, 3), np.uint8))\n"
            "r.predict_faces(np.zeros((2, 48, 48), np.uint8))\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('lightning', 'pytorch_lightning') or m == 'ferlab.module')\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_cli_errors_are_one_message_unless_debug_asks_for_the_traceback(tmp_path, capsys,
                                                                          portrait):
    from PIL import Image

    from ferlab.export import main as export_main
    from ferlab.predict import main as predict_main

    (tmp_path / "notes.pt").write_text("not a model")
    Image.fromarray(portrait).save(tmp_path / "photo.png")
    assert export_main([str(tmp_path / "notes.pt"), str(tmp_path / "out.pt")]) == 2
    assert predict_main(["--model", str(tmp_path / "notes.pt"), str(tmp_path / "photo.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("notes.pt is not a readable") == 2 and "Traceback" not in err
    with pytest.raises(ValueError, match="not a readable"):
        export_main([str(tmp_path / "notes.pt"), str(tmp_path / "out.pt"), "--debug"])
    with pytest.raises(ValueError, match="not a readable"):
        predict_main(["--model", str(tmp_path / "notes.pt"), str(tmp_path / "photo.png"),
                      "--debug"])
