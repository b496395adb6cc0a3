"""ferlab.artifacts: every way in for a model file, and files crafted to run code through them."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra

import ferlab
from ferlab import artifacts
from ferlab.artifacts import CONFIG_KEY, UnsafeArtifactError
from ferlab.config import CONFIG_DIR, with_run_overrides
from ferlab.data import EMOTIONS
from ferlab.inference.model_file import save_model
from ferlab.inference.recognizer import EmotionRecognizer
from ferlab.models import VGG, schema
from ferlab.models.schema import SchemaError
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


def test_a_crafted_network_target_is_refused_and_nothing_elsewhere_runs(tmp_path):
    """A class named as the network is refused (the name is looked up, never imported); a class
    named anywhere else in a stored config is never built at all: the file loads, nothing acts."""
    attack = Attack(tmp_path)
    for name, call in attack.calls.items():
        for place in PLACES:
            for craft in (_crafted_checkpoint, _crafted_model_file):
                suffix = ".ckpt" if craft is _crafted_checkpoint else ".pt"
                file = craft(tmp_path / f"crafted{suffix}", call, place)
                if place.startswith("network"):
                    with pytest.raises(SchemaError, match=re.escape(name)) as refused:
                        artifacts.load(file)
                    assert str(file) in str(refused.value)
                    with pytest.raises(SchemaError):
                        artifacts.read_network_weights(file)
                else:
                    assert artifacts.load(file).classes == EMOTIONS
                assert not attack.acted(), (name, place, craft.__name__)


# the payload of the report that found interpolations resolved by instantiate (issue 43): an
# OmegaConf resolver that creates a config calling pathlib.Path.write_text
def _interpolation(out: Path) -> str:
    return ("${oc.create:{_target_:builtins.min,_args_:[0.5,{_target_:pathlib.Path.write_text,"
            f"_args_:[{{_target_:pathlib.Path,_args_:[{out}]}},text]}}]}}}}")


INTERPOLATED = {
    "model.dropout": lambda cfg, v: cfg["model"].update(dropout=v),
    "model.hidden[0]": lambda cfg, v: cfg["model"].update(hidden=[v]),
    "module.lr": lambda cfg, v: cfg["module"].update(lr=v),
    "data.augment": lambda cfg, v: cfg["data"].update(augment={"steps": [v]}),
}


@pytest.mark.parametrize("place", INTERPOLATED)
@pytest.mark.parametrize("kind", [".ckpt", ".pt"])
def test_an_interpolation_anywhere_is_refused_before_anything_runs(tmp_path, place, kind):
    out = tmp_path / "pwned"
    network = _tiny_network()
    if kind == ".ckpt":
        payload = _checkpoint(network)
        INTERPOLATED[place](payload[CONFIG_KEY], _interpolation(out))
    else:
        save_model(network, dict(TINY), EMOTIONS, tmp_path / "m.pt")
        payload = torch.load(tmp_path / "m.pt", weights_only=True)
        config = {"model": payload["model"], "module": {}, "data": {}}
        INTERPOLATED[place](config, _interpolation(out))
        payload.update(model=config["model"], recipe={k: v for k, v in config.items()
                                                      if k != "model"})
    torch.save(payload, tmp_path / f"crafted{kind}")
    for read in (artifacts.load, artifacts.read_network_weights):
        with pytest.raises(UnsafeArtifactError, match="holds an interpolation") as refused:
            read(tmp_path / f"crafted{kind}")
        assert f"crafted{kind}" in str(refused.value)
    assert not out.exists()


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


def test_every_network_config_of_ferlab_fits_the_schema():
    """Every network ferlab's configs build can be described in a file, and is built the same
    from its description (parameter for parameter)."""
    from hydra import compose, initialize_config_dir

    for file in sorted((Path(CONFIG_DIR) / "model").glob("*.yaml")):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[f"model={file.stem}"])
        from omegaconf import OmegaConf

        described = OmegaConf.to_container(cfg.model, resolve=True)
        built = artifacts.build_network(described, file.name)
        from hydra.utils import instantiate

        reference = instantiate({k: v for k, v in described.items() if k != "weights"})
        assert [p.shape for p in built.parameters()] == [p.shape for p in
                                                          reference.parameters()], file.name
        GlobalHydra.instance().clear()


def test_bounds_refuse_a_network_that_would_exhaust_memory(tmp_path):
    """A stage list asking for ~360 GB is refused by arithmetic, before anything is allocated."""
    huge = {**TINY, "stages": [[2048] * 8] * 5, "hidden": [8192] * 4, "head": "gap"}
    with pytest.raises(SchemaError, match=r"parameters, over ferlab's bound"):
        artifacts.build_network(huge, "huge.pt")
    for bad, said in [({**TINY, "_partial_": True}, "_partial_"),
                      ({**TINY, "stages": "[[8]]"}, "stages"),
                      ({**TINY, "batch_norm": "yes"}, "batch_norm"),
                      ({**TINY, "num_classes": 10**12}, "num_classes")]:
        with pytest.raises(SchemaError, match=f"huge.pt: its network.*{said}"):
            artifacts.build_network(bad, "huge.pt")


def test_a_users_own_network_loads_only_once_registered(tmp_path):
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self, num_classes: int = 7, width: int = 4) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, width),
                                     nn.Linear(width, num_classes))

        def forward(self, x):
            return self.net(x)

    name = f"{Tiny.__module__}.{Tiny.__qualname__}"
    path = save_model(Tiny(), {"_target_": name, "num_classes": 7, "width": 4}, EMOTIONS,
                      tmp_path / "mine.pt")
    with pytest.raises(SchemaError, match=r"register_network"):
        artifacts.load(path)
    try:
        assert ferlab.register_network(Tiny) == name
        assert isinstance(artifacts.load(path).network, Tiny)
        payload = torch.load(path, weights_only=True)
        payload["model"]["width"] = "4"  # its schema comes from the annotations
        torch.save(payload, path)
        with pytest.raises(SchemaError, match="width"):
            artifacts.load(path)
    finally:
        schema.FAMILIES.pop(name, None)


def test_weights_that_do_not_fit_their_network_are_explained(tmp_path):
    checkpoint = _checkpoint(_tiny_network())
    checkpoint[CONFIG_KEY]["model"]["hidden"] = [32]
    torch.save(checkpoint, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match=r"x.ckpt: its weights do not fit the network"):
        artifacts.load(tmp_path / "x.ckpt")


# --- every entry point refuses a crafted file ---------------------------------------------------

CRAFTED = [("io.open", "network", _crafted_checkpoint),
           ("interpolation", "module nested", _crafted_checkpoint),
           ("interpolation", "data", _crafted_checkpoint),
           ("os.makedirs", "network nested", _crafted_model_file),
           ("interpolation", "network", _crafted_model_file)]


CRAFTED_IDS = [f"{n}-{p}-{c.__name__[9:]}" for n, p, c in CRAFTED]


def _craft(tmp_path: Path, name: str, place: str, craft) -> tuple[Path, str, Attack]:
    """A crafted file, the text its refusal says, and the attack to check for traces."""
    attack = Attack(tmp_path / "attack")
    suffix = ".ckpt" if craft is _crafted_checkpoint else ".pt"
    if name == "interpolation":
        call, said = {"dropout": _interpolation(attack.where / "pwned")}, "holds an interpolation"
    else:
        call, said = attack.calls[name], re.escape(name)
    return craft(tmp_path / f"crafted{suffix}", call, place), said, attack


@pytest.fixture(params=CRAFTED, ids=CRAFTED_IDS)
def crafted(request, tmp_path):
    return _craft(tmp_path, *request.param)


def test_recognizer_export_and_predict_refuse_it(crafted, tmp_path, portrait, capsys):
    from ferlab.export import main as export_main
    from ferlab.predict import main as predict_main

    file, said, attack = crafted
    with pytest.raises(ValueError, match=said):
        EmotionRecognizer(file)
    assert export_main([str(file), str(tmp_path / "out.pt")]) == 2
    assert not (tmp_path / "out.pt").exists()
    from PIL import Image

    Image.fromarray(portrait).save(tmp_path / "photo.png")
    assert predict_main(["--model", str(file), str(tmp_path / "photo.png")]) == 2
    assert re.search(said, capsys.readouterr().err)
    assert not attack.acted()


def test_evaluate_refuses_it(crafted, tmp_path, csv_root):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.evaluate import evaluate

    file, said, attack = crafted
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={file}", f"data_root={csv_root}",
                                         f"output_dir={tmp_path / 'ev'}", "device=cpu"])
    GlobalHydra.instance().clear()
    with pytest.raises(ValueError, match=said):
        evaluate(cfg)
    assert not attack.acted() and not (tmp_path / "ev").exists()


# resume= takes checkpoints and run directories, the other two model files as well
@pytest.mark.parametrize("key, crafting", [
    (key, c) for key in ("init_from", "module.teacher", "resume") for c in CRAFTED
    if key != "resume" or c[0] == "interpolation" and c[2] is _crafted_checkpoint])
def test_training_refuses_it(make_cfg, tmp_path, key, crafting):
    """(resume= builds the network from the command and the run's recorded overrides, so only
    what is read from the checkpoint itself, its config as plain data, can be refused there.)"""
    from ferlab.train import train

    file, said, attack = _craft(tmp_path, *crafting)
    run = tmp_path / "run"
    if key == "resume":  # a run directory whose last.ckpt is the crafted file
        (run / "checkpoints").mkdir(parents=True)
        file = file.rename(run / "checkpoints" / "last.ckpt")
    cfg = make_cfg(["model=baseline", "trainer.max_epochs=1", "test=false", f"{key}={file}"],
                   output_dir=run)
    with pytest.raises(ValueError, match=said):
        train(cfg)
    assert not attack.acted()
    # nothing but the lock the refused run took on its directory
    assert sorted(p.name for p in run.rglob("*")) == (
        [".ferlab.lock", "checkpoints", "last.ckpt"] if key == "resume" else [".ferlab.lock"])


def _run_with_record(tmp_path: Path, record: str) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(_checkpoint(_tiny_network()), run / "checkpoints" / "last.ckpt")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(record)
    return run


def test_resume_refuses_a_crafted_overrides_record(tmp_path, csv_root):
    """A run directory's recorded overrides are replayed by resume=: one that could choose code
    stops the command before Hydra runs, and nothing is written."""
    pwned = tmp_path / "pwned"
    crafted = f"+callbacks.x={{_target_: io.open, file: {pwned}, mode: w}}"
    run = _run_with_record(tmp_path, yaml.safe_dump(["model=baseline", crafted]))
    before = sorted(run.rglob("*"))
    with pytest.raises(ValueError, match=r"records the override .*instantiation key '_target_'"):
        with_run_overrides([f"resume={run}"])
    result = subprocess.run([sys.executable, "-m", "ferlab.train", f"resume={run}",
                             f"data.root={csv_root}"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "instantiation key '_target_'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not pwned.exists() and sorted(run.rglob("*")) == before
    # what the user types replaces the record's override of the same key, which is then not
    # replayed (nor refused)
    args = with_run_overrides([f"resume={run}", "+callbacks.x=null"])
    assert args == ["model=baseline", f"resume={run}", "+callbacks.x=null"]


EVIL = "../../../../../../tmp/evil"
RECORDS = {
    # list values: every element is checked (a string-only check let these through)
    "list group": (f"+experiment=[{EVIL}]", "reaches outside its config group"),
    "list element": (f"callbacks=[default,{EVIL}]", "reaches outside its config group"),
    "absolute": ("+experiment=/tmp/evil", "reaches outside its config group"),
    "interpolation": ("model.dropout=${oc.env:HOME}", "holds an interpolation"),
    "nested interpolation": ("+data.x=[1,{a: '${oc.create:{}}'}]", "holds an interpolation"),
    "target key": ("model._target_=builtins.print", "instantiation key"),
    "partial": ("+module.optimizer._partial_=false", "instantiation key"),
    "nested args": ("+trainer.x={_args_: [1]}", "instantiation key '_args_'"),
    "hydra": ("hydra.run.dir=/tmp", "Hydra's own settings"),
    "sweep": ("model.dropout=0.1,0.2", "is a sweep"),
}


@pytest.mark.parametrize("case", RECORDS)
def test_every_crafted_recorded_override_is_refused(tmp_path, case):
    override, said = RECORDS[case]
    run = _run_with_record(tmp_path, yaml.safe_dump(["model=baseline", override]))
    with pytest.raises(ValueError, match=re.escape(said)):
        with_run_overrides([f"resume={run}"])


@pytest.mark.parametrize("text, said", [
    ("- !!python/object/apply:os.system ['touch pwned']\n", "not a plain YAML list"),
    ("- model=baseline\n- [unclosed\n", "line 3 is not a plain YAML list"),
    ("model: baseline\n", "not a YAML list of override strings"),
    ("- 3\n", "not a YAML list of override strings"),
])
def test_a_broken_overrides_record_is_one_line(tmp_path, text, said):
    run = _run_with_record(tmp_path, text)
    with pytest.raises(ValueError, match=re.escape(said)) as refused:
        with_run_overrides([f"resume={run}"])
    assert "overrides.yaml" in str(refused.value)
    assert not (tmp_path / "pwned").exists()


def test_group_choices_and_values_of_a_real_record_replay(tmp_path):
    record = ["experiment=budget30_slim_lean", "callbacks=[default,ema]", "data.root=/data/fer",
              "module.optimizer.lr=0.01", "trainer.devices=[0,1]", "name=my run"]
    run = _run_with_record(tmp_path, yaml.safe_dump(record))
    assert with_run_overrides([f"resume={run}"]) == [*record, f"resume={run}"]


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


def _onnx_with(tmp_path: Path, **metadata: str) -> Path:
    import onnx

    from ferlab.inference.model_file import onnx_model

    path = save_model(_tiny_network(), dict(TINY), EMOTIONS, tmp_path / "m.pt")
    model = onnx.load_from_string(onnx_model(artifacts.load(path), "none", path))
    props = {p.key: p.value for p in model.metadata_props} | metadata
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    (tmp_path / "crafted.onnx").write_bytes(model.SerializeToString())
    return tmp_path / "crafted.onnx"


@pytest.mark.parametrize("case, said", [
    ("prior with dict values", r"class prior record \(prior\) is damaged: 'train' must give a "
                               r"number for each"),
    ("partial", r"its network \(model\) describes a VGG .*_partial_: Extra inputs"),
    ("360 GB of stages", r"parameters, over ferlab's bound"),
    ("classes as a word", r"its classes must be a list of class names; got 'angry'"),
    ("onnx network not JSON", r"its metadata ferlab.network is not valid JSON"),
    ("onnx classes a word", r"its metadata ferlab.classes must be a list of class names"),
    ("onnx prior dict values", r"class prior record \(metadata ferlab.prior\) is damaged"),
])
def test_crafted_metadata_is_one_line_naming_the_file_and_field(tmp_path, case, said):
    file = tmp_path / "crafted.pt"
    payload = torch.load(save_model(_tiny_network(), dict(TINY), EMOTIONS, file),
                         weights_only=True)
    train = dict.fromkeys(EMOTIONS, 1 / 7)
    if case == "prior with dict values":
        payload["prior"] = {"train": {**train, "happy": {"x": 1}}, "output": train}
    elif case == "partial":
        payload["model"]["_partial_"] = True
    elif case == "360 GB of stages":
        payload["model"].update(stages=[[2048] * 8] * 8, hidden=[8192] * 4, head="gap")
    elif case == "classes as a word":
        payload["classes"] = "angry"
    elif case == "onnx network not JSON":
        file = _onnx_with(tmp_path, **{"ferlab.network": "{'_target_': oops"})
    elif case == "onnx classes a word":
        file = _onnx_with(tmp_path, **{"ferlab.classes": '"angry"'})
    elif case == "onnx prior dict values":
        file = _onnx_with(tmp_path, **{"ferlab.prior": json.dumps(
            {"train": {**train, "sad": {}}, "output": train})})
    if file.suffix == ".pt":
        torch.save(payload, file)
    with pytest.raises(ValueError, match=said) as refused:
        artifacts.load(file)
    assert str(file) in str(refused.value) and "\n" not in str(refused.value)


def test_an_onnx_teacher_is_refused_in_one_line(make_cfg, tmp_path):
    from ferlab.train import train

    file = _onnx_with(tmp_path)
    cfg = make_cfg(["model=baseline", f"module.teacher={file}"], output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"is an ONNX file, which ferlab runs for inference"):
        train(cfg)


def test_a_resnet_loads_runs_on_onnx_runtime_and_joins_an_ensemble(tmp_path):
    """A residual network goes through the same schema as VGG: its file loads for inference,
    converts to ONNX (ONNX Runtime's outputs match PyTorch's) and averages with a VGG."""
    from ferlab.models import ResNet

    torch.manual_seed(0)
    described = {"_target_": "ferlab.models.ResNet", "num_classes": 7, "stem": 8,
                 "stages": [[8], [16], [16]]}
    resnet = artifacts.build_network(described, "resnet.pt").eval()
    assert isinstance(resnet, ResNet)
    path = save_model(resnet, described, EMOTIONS, tmp_path / "resnet.pt")
    faces = (torch.rand(5, 48, 48) * 255).to(torch.uint8).numpy()
    on_torch = EmotionRecognizer(path, backend="torch", prior="train").predict_faces(faces)
    on_onnx = EmotionRecognizer(path, backend="onnxruntime", prior="train").predict_faces(faces)
    np.testing.assert_allclose(on_onnx, on_torch, atol=1e-5)
    vgg = save_model(_tiny_network(), dict(TINY), EMOTIONS, tmp_path / "vgg.pt")
    both = EmotionRecognizer([path, vgg], backend="torch", prior="train").predict_faces(faces)
    alone = EmotionRecognizer(vgg, backend="torch", prior="train").predict_faces(faces)
    np.testing.assert_allclose(both, (on_torch + alone) / 2, atol=1e-6)
    with pytest.raises(SchemaError, match=r"stem: Input should be less than or equal to 2048"):
        artifacts.build_network({**described, "stem": 4096}, "resnet.pt")
