"""Property-based: configs generated with targets, interpolations, resolvers, YAML tags and huge
sizes, put into every kind of file ferlab reads (checkpoints, model files, ONNX metadata, a run's
recorded overrides), find nothing that runs and no network beyond the schema's bounds: each file
either loads as plain data or is refused with a ValueError that names it."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ferlab import artifacts
from ferlab.artifacts import CONFIG_KEY
from ferlab.config import check_recorded_override, read_recorded_overrides
from ferlab.data import EMOTIONS
from ferlab.inference.model_file import onnx_model, save_model
from ferlab.models import schema
from tests.conftest import TINY
from tests.test_artifacts import _checkpoint, _tiny_network

CANARY = Path(tempfile.gettempdir()) / "ferlab-hostile-canary"
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _calls(canary: str) -> list:
    """Configs that, instantiated or resolved, would leave the canary on disk."""
    write = {"_target_": "pathlib.Path.write_text",
             "_args_": [{"_target_": "pathlib.Path", "_args_": [canary]}, "x"]}
    return [
        {"_target_": "io.open", "file": canary, "mode": "w"},
        {"_target_": "os.makedirs", "name": canary},
        write,
        {"_target_": "builtins.min", "_args_": [0.5, write]},
        {"_target_": "ferlab.models.VGG", "_partial_": True, "hidden": [write]},
        {"_target_": "builtins.exec", "_args_": [f"open({canary!r}, 'w')"]},
    ]


def _interpolations(canary: str) -> list[str]:
    return [
        "${oc.create:{_target_:builtins.min,_args_:[0.5,{_target_:pathlib.Path.write_text,"
        f"_args_:[{{_target_:pathlib.Path,_args_:[{canary}]}},text]}}]}}}}",
        "${oc.env:HOME}", "${ferlab.run_dir:/,/}", "${now:%Y}", "x${oc.decode:'[1,2]'}y",
        "${oc.select:model.dropout,0.5}", "${..}",
    ]


TAGS = ["!!python/object/apply:os.system ['touch canary']", "!!python/name:os.system",
        "!!binary aGVsbG8=", "!!set {a, b}", "&a [*a]"]
HUGE = st.sampled_from([2**31, 2**63 - 1, 10**30, 2048, 8192, -1, 0, float("inf"),
                        float("nan"), 1e300])
SCALARS = (st.none() | st.booleans() | st.integers(-10, 10) | HUGE
           | st.floats(allow_nan=False, width=32) | st.text(max_size=8)
           | st.sampled_from(TAGS) | st.sampled_from(_interpolations(str(CANARY)))
           | st.sampled_from(["ferlab.models.VGG", "ferlab.models.vgg.VGG", "io.open", "flatten",
                              "gap", "angry", "train"]))
KEYS = st.sampled_from(["_target_", "_args_", "_partial_", "_recursive_", "_convert_",
                        "stages", "hidden", "dropout", "head", "num_classes", "batch_norm",
                        "in_channels", "input_size", "train", "output", "faces", "splits",
                        "angry", "x"])
TREES = st.recursive(
    SCALARS | st.sampled_from(_calls(str(CANARY))),
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(KEYS, inner, max_size=4)
                   # a network description with a hostile field among real ones
                   | st.builds(lambda k, v: {**TINY, k: v}, KEYS, inner)
                   # a wide or deep stage list
                   | st.builds(lambda n, w: {**TINY, "stages": [[w] * n] * n, "head": "gap"},
                               st.integers(1, 12), HUGE)),
    max_leaves=12)


def _held(result) -> None:
    """A successful load holds a network within the schema's bounds, and nothing acted."""
    network = getattr(result, "network", None)
    if isinstance(network, torch.nn.Module):
        assert sum(p.numel() for p in network.parameters()) <= schema.MAX_PARAMETERS
    assert not CANARY.exists()


def _try(read, *args) -> None:
    try:
        _held(read(*args))
        event("loaded")
    except ValueError as err:  # refused: the message names the file
        event(f"refused: {type(err).__name__}")
        assert str(args[0]) in str(err), err
    assert not CANARY.exists()


@pytest.fixture(scope="module")
def workdir():
    CANARY.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="ferlab-hostile-") as tmp:
        yield Path(tmp)
    assert not CANARY.exists()


@SETTINGS
@given(tree=TREES, place=st.sampled_from(["model", "module", "data", "name", "trainer",
                                          "model.hidden", "data.num_classes", "prior"]))
def test_a_checkpoint_with_any_config_runs_nothing(workdir, tree, place):
    payload = _checkpoint(_tiny_network())
    config = payload[CONFIG_KEY]
    if place == "prior":
        payload["ferlab_prior"] = copy.deepcopy(tree)
    elif "." in place:
        group, key = place.split(".")
        config[group][key] = copy.deepcopy(tree)
    else:
        config[place] = copy.deepcopy(tree)
    file = workdir / "hostile.ckpt"
    torch.save(payload, file)
    _try(artifacts.load, file)
    _try(artifacts.read_network_weights, file)


@SETTINGS
@given(tree=TREES, key=st.sampled_from(["model", "classes", "recipe", "prior", "tta",
                                        "face_size", "extra"]))
def test_a_model_file_with_any_metadata_runs_nothing(workdir, tree, key):
    file = save_model(_tiny_network(), dict(TINY), EMOTIONS, workdir / "hostile.pt")
    payload = torch.load(file, weights_only=True)
    payload[key] = copy.deepcopy(tree)
    torch.save(payload, file)
    _try(artifacts.load, file)


@pytest.fixture(scope="module")
def onnx_bytes(workdir):
    path = save_model(_tiny_network(), dict(TINY), EMOTIONS, workdir / "m.pt")
    return onnx_model(artifacts.load(path), "none", path)


@settings(SETTINGS, max_examples=30)
@given(tree=TREES, key=st.sampled_from(["network", "classes", "recipe", "prior", "input", "tta"]),
       raw=st.booleans())
def test_an_onnx_file_with_any_metadata_runs_nothing(workdir, onnx_bytes, tree, key, raw):
    model = onnx.load_from_string(onnx_bytes)
    meta = {p.key: p.value for p in model.metadata_props}
    # as JSON (what ferlab writes), or the text itself (a string, a tag, an interpolation)
    meta[f"ferlab.{key}"] = tree if raw and isinstance(tree, str) else json.dumps(tree)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    file = workdir / "hostile.onnx"
    file.write_bytes(model.SerializeToString())
    _try(artifacts.load, file)


OVERRIDE_KEYS = st.sampled_from(["model", "+experiment", "callbacks", "module/optimizer",
                                 "model.dropout", "+data.x", "trainer.devices", "name",
                                 "hydra.run.dir", "model._target_", "+callbacks.x", "seed"])


@st.composite
def _override(draw) -> str:
    """An override as a run's record could hold it: a key and a value in Hydra's syntax."""
    key = draw(OVERRIDE_KEYS)
    tree = draw(TREES)
    value = draw(st.sampled_from(["yaml", "flow", "text"]))
    if value == "text" and isinstance(tree, str):
        return f"{key}={tree}"
    # Hydra's value grammar is close to YAML flow style
    return f"{key}={yaml.safe_dump(tree, default_flow_style=True, width=10**6).strip()}"


@SETTINGS
@given(overrides=st.lists(_override(), min_size=1, max_size=3))
def test_recorded_overrides_never_choose_code(workdir, overrides):
    """Whatever a run's record holds, what passes the check sets a value or picks a file of a
    config group: no instantiation key, no interpolation, no path out of the group."""
    record = workdir / "overrides.yaml"
    record.write_text(yaml.safe_dump(overrides))
    for override in read_recorded_overrides(record):
        try:
            check_recorded_override(override, record)
        except ValueError as err:
            assert str(record) in str(err)
            continue
        assert "${" not in override
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides([override])[0]
        assert not parsed.key_or_group.startswith("hydra")
        assert "_target_" not in override and "_args_" not in override
        assert ".." not in override.split("=", 1)[1] or "." in parsed.key_or_group


@SETTINGS
@given(text=st.text(max_size=60) | st.sampled_from(TAGS).map(lambda t: f"- {t}\n"))
def test_any_overrides_text_is_read_or_refused_in_one_line(workdir, text):
    record = workdir / "overrides.yaml"
    record.write_text(text)
    try:
        overrides = read_recorded_overrides(record)
    except ValueError as err:
        assert str(record) in str(err) and "\n" not in str(err)
        return
    assert all(isinstance(o, str) for o in overrides)
