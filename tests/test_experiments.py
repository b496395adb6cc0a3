"""The experiments record stays generated from its files, never typed by hand."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from ferlab.artifacts import SHIPPED_ENSEMBLES, SHIPPED_MODELS, TORCH_MODELS

ROOT = Path(__file__).resolve().parents[1]


def _record_module():
    spec = importlib.util.spec_from_file_location("record", ROOT / "tools/record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_studies_table_matches_the_study_files():
    record = _record_module()
    text = (ROOT / "experiments/README.md").read_text()
    block = text.split(record.BEGIN, 1)[1].split(record.END, 1)[0].strip()
    assert block == record.table()


def test_every_later_stage_names_a_recorded_run():
    record = _record_module()
    paths = list((ROOT / "experiments").glob("*/*/study.json"))
    assert len(paths) > 50
    names = [p.parent.name for p in paths]
    assert len(set(names)) == len(names), "run names are unique: later stages link to them"
    for path in paths:
        study = json.loads(path.read_text())
        if "after" in study:
            assert (record.find(study["after"]) / "study.json").is_file(), path
            assert "init_from=" in study["command"], path


def test_recorded_command_keeps_the_recipe_and_drops_where_it_ran(tmp_path, monkeypatch):
    """A run made elsewhere (another data root, output folder, GPU) is recorded with the
    overrides that make the model, the hardware it names and the trainer's precision."""
    record = _record_module()
    monkeypatch.setattr(record, "HERE", tmp_path / "experiments")
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"epochs": 3, "fit_seconds": 60.0}))
    (run / ".hydra" / "overrides.yaml").write_text(
        "- experiment=vgg8_gap_mix\n- name=run_x\n- paths.runs=/tmp/r\n- data.root=/tmp/fer\n"
        "- test=false\n- +trainer.enable_progress_bar=false\n- callbacks.progress_bar=null\n"
        "- trainer=gpu\n- trainer.max_epochs=3\n")
    (run / ".hydra" / "config.yaml").write_text(
        "data: {num_classes: 7, train_splits: [train, val]}\ntrainer: {precision: bf16-mixed}\n")
    study = json.loads((record.add("st/s", run, "q?", None, hardware_text="1 GPU") /
                        "study.json").read_text())
    assert study["command"] == ("python -m ferlab.train experiment=vgg8_gap_mix trainer=gpu "
                                "trainer.max_epochs=3")
    assert study["hardware"] == "1 GPU" and study["precision"] == "bf16-mixed"
    assert study["val_in_training"] is True and study["data"] == "FER2013 train+val, 7 classes"
    row = next(line for line in record.table().splitlines() if line.startswith("| [s]"))
    assert "| 1 GPU |" in row and "| - (val in training) | - |" in row


def test_recorded_data_names_the_set():
    record = _record_module()
    ferplus = {"_target_": "ferlab.data.FERPlusDataModule", "labels": "crossentropy",
               "votes": "label.csv", "num_classes": 8, "train_splits": ["train"]}
    assert record.describe_data(ferplus) == ("FER+ (crossentropy targets, votes from label.csv) "
                                             "train, 8 classes")
    mixture = {"_target_": "ferlab.data.MixtureDataModule", "sets": {"fer2013": {}, "raf": {}},
               "num_classes": 7, "train_splits": ["train"]}
    assert record.describe_data(mixture) == "mixture of fer2013, raf train, 7 classes"


def test_record_without_figures_keeps_the_numbers(tmp_path, monkeypatch):
    record = _record_module()
    monkeypatch.setattr(record, "HERE", tmp_path / "experiments")
    run, ev = tmp_path / "run", tmp_path / "eval"
    (run / ".hydra").mkdir(parents=True)
    ev.mkdir()
    (run / "metrics.json").write_text(json.dumps({"epochs": 1, "fit_seconds": 6.0}))
    (run / ".hydra" / "overrides.yaml").write_text("- model=vgg9\n")
    (run / ".hydra" / "config.yaml").write_text(
        "data: {num_classes: 7, train_splits: [train]}\ntrainer: {precision: 32-true}\n")
    scores = {"acc": 0.5, "acc_macro": 0.4, "acc_top2": 0.7, "n": 10}
    (ev / "metrics.json").write_text(json.dumps({"tta": "flip", "datasets": {"test": scores}}))
    (ev / "report.md").write_text("# Evaluation\n| test | 0.5 |\n![cm](test_cm.png)\n")
    (ev / "test_cm.png").write_bytes(b"png")
    study = record.add("st/s", run, "q?", ev)
    assert sorted(p.name for p in (study / "report").iterdir()) == ["metrics.json", "report.md"]
    text = (study / "report" / "report.md").read_text()
    assert "| test | 0.5 |" in text and "![" not in text and "ferlab.evaluate" in text
    assert json.loads((study / "study.json").read_text())["eval"]["test"]["acc"] == 0.5
    assert "| 0.5000 / - (flip) |" in record.table()


def test_no_images_are_committed_with_the_studies():
    """Study records keep numbers only; evaluate draws the figures again from the model."""
    images = [p for p in (ROOT / "experiments").rglob("*")
              if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"}]
    assert images == [], f"images in experiments/ (record.py keeps numbers only): {images}"


def test_record_of_a_run_cut_before_its_end_writes_nothing(tmp_path, monkeypatch):
    """A killed run has no metrics.json: recording it fails with what to do, and leaves no empty
    study folder behind."""
    record = _record_module()
    monkeypatch.setattr(record, "HERE", tmp_path / "experiments")
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- model=vgg9\n")
    with pytest.raises(SystemExit, match="did not finish.*resume="):
        record.add("st/cut", run, "q?", None)
    assert not (tmp_path / "experiments" / "st" / "cut").exists()


def _study_with_in_run_test(record, tmp_path, ckpt: str) -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(
        {"epochs": 2, "fit_seconds": 6.0, "test/ckpt": ckpt, "test/acc": 0.25,
         "test/loss": 1.5, "test/recall/happy": 0.5, "val/acc_best": 0.3}))
    (run / ".hydra" / "overrides.yaml").write_text("- callbacks=ema\n")
    (run / ".hydra" / "config.yaml").write_text(
        "data: {num_classes: 7, train_splits: [train]}\ntrainer: {precision: 32-true}\n")
    return record.add("st/s", run, "q?", None)


def _evaluation(folder: Path, source: str, tta: str) -> Path:
    folder.mkdir(parents=True)
    test = {"acc": 0.5, "acc_macro": 0.4, "acc_top2": 0.7, "n": 10,
            "per_class": {"happy": {"recall": 0.9}}}
    if tta != "none":
        test = {**test, "acc": 0.55, "no_tta": {"acc": 0.5, "acc_macro": 0.4, "acc_top2": 0.7}}
    (folder / "metrics.json").write_text(json.dumps(
        {"tta": tta, "model": {"source": source}, "datasets": {"test": test}}))
    return folder


def test_retest_replaces_the_in_run_test_by_an_evaluation_of_its_checkpoint(
        tmp_path, monkeypatch):
    """The in-run test of an EMA run made before the fix measured the raw weights: retest puts
    the evaluation's figures of the same checkpoint, without TTA, in their place and keeps the
    replaced ones."""
    record = _record_module()
    monkeypatch.setattr(record, "HERE", tmp_path / "experiments")
    ckpt = str(tmp_path / "runs/r/checkpoints/best.ckpt")
    study = _study_with_in_run_test(record, tmp_path, ckpt)
    ev = _evaluation(tmp_path / "eval_plain", "runs/r/checkpoints/best.ckpt", "none")
    s = json.loads(record.retest("s", ev).read_text())
    assert s["train"]["test/acc"] == 0.5 and s["train"]["test/acc_macro"] == 0.4
    assert s["train"]["test/recall/happy"] == 0.9 and "test/loss" not in s["train"]
    # recorded relative to the repository (tmp_path here), as every record
    assert s["train"]["test/ckpt"] == "runs/r/checkpoints/best.ckpt"
    assert s["train"]["val/acc_best"] == 0.3
    assert s["test_raw_weights"] == {"test/acc": 0.25, "test/loss": 1.5,
                                     "test/recall/happy": 0.5}
    assert "| 0.5000 |" in record.table()
    # the study's own flip report: the figures without TTA, the raw ones kept from before
    _evaluation(study / "report", ckpt, "flip")
    s = json.loads(record.retest("s").read_text())
    assert s["train"]["test/acc"] == 0.5 and s["test_raw_weights"]["test/acc"] == 0.25


def test_retest_refuses_an_evaluation_of_another_checkpoint(tmp_path, monkeypatch):
    record = _record_module()
    monkeypatch.setattr(record, "HERE", tmp_path / "experiments")
    study = _study_with_in_run_test(record, tmp_path, str(tmp_path / "runs/r/best.ckpt"))
    before = (study / "study.json").read_text()
    ev = _evaluation(tmp_path / "eval", "runs/r/last.ckpt", "none")
    with pytest.raises(SystemExit, match="not the checkpoint.*ferlab.evaluate ckpt_path="):
        record.retest("s", ev)
    with pytest.raises(SystemExit, match="holds no evaluation"):
        record.retest("s")  # the study has no report of its own
    assert (study / "study.json").read_text() == before


def test_a_run_resumed_over_sittings_counts_every_sitting(tmp_path, monkeypatch):
    """fit_seconds is the last sitting's alone in a resumed run; the table shows the Timer's sum
    over all of them, and a one-sitting run keeps its whole fit time."""
    record = _record_module()
    monkeypatch.setattr(record, "HERE", tmp_path / "experiments")
    for name, seconds in (("resumed", {"fit_seconds": 600.0, "fit_seconds_total": 3600.0}),
                          ("one", {"fit_seconds": 1260.0, "fit_seconds_total": 1200.0})):
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"epochs": 4, **seconds}))
        (run / ".hydra" / "overrides.yaml").write_text("- model=vgg9\n")
        (run / ".hydra" / "config.yaml").write_text(
            "data: {num_classes: 7, train_splits: [train]}\ntrainer: {precision: 32-true}\n")
        record.add(f"st/{name}", run, "q?", None)
    rows = record.table().splitlines()
    assert "| 4 | 60 min |" in next(r for r in rows if r.startswith("| [resumed]"))
    assert "| 4 | 21 min |" in next(r for r in rows if r.startswith("| [one]"))


@pytest.mark.parametrize("epochs, kept", [(20, False), (14, True)])
def test_a_sittings_time_budget_is_the_recipe_only_of_a_run_it_cut_short(
        tmp_path, monkeypatch, epochs, kept):
    """A run resumed on to its last epoch was made by its overrides without the first sitting's
    callbacks.timer.duration; a run that the timer stopped for good keeps it. The seed is kept."""
    record = _record_module()
    monkeypatch.setattr(record, "HERE", tmp_path / "experiments")
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"epochs": epochs, "fit_seconds": 60.0}))
    (run / ".hydra" / "overrides.yaml").write_text(
        "- experiment=vgg8_gap_restart_trainval\n- callbacks.timer.duration='00:00:30:00'\n")
    (run / ".hydra" / "config.yaml").write_text(
        "seed: 43\ndata: {num_classes: 7, train_splits: [train]}\n"
        "trainer: {precision: 32-true, max_epochs: 20}\n")
    study = json.loads((record.add("st/s", run, "q?", None) / "study.json").read_text())
    assert ("callbacks.timer.duration='00:00:30:00'" in study["command"]) is kept
    assert study["command"].startswith(
        "python -m ferlab.train experiment=vgg8_gap_restart_trainval")
    assert study["seed"] == 43


def _model_card_module(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    spec = importlib.util.spec_from_file_location("model_card", ROOT / "tools/model_card.py")
    card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card)
    return card


def test_ensemble_card_is_what_model_card_py_writes_from_its_evaluations(monkeypatch):
    card = _model_card_module(monkeypatch)
    assert card.render_ensemble() == (ROOT / card.CARDS["ensemble"]).read_text()


@pytest.mark.parametrize("name", ["default", "cpu-trained", "fast"])
def test_model_card_is_what_model_card_py_writes_from_its_study(monkeypatch, name):
    """Each shipped model's card is generated: rendering it again from the study and report it
    names (and the shipped weights) gives the committed text, so no figure in it was typed by
    hand."""
    card = _model_card_module(monkeypatch)
    # a card per PyTorch model (its int8 file on it), one for the ensembles, and one per model
    # shipped as one file (not a PyTorch model's int8 copy)
    single = {n for n in SHIPPED_MODELS if n not in TORCH_MODELS
              and n.removesuffix("-int8") not in TORCH_MODELS}
    assert set(card.CARDS) == {*TORCH_MODELS, *list(SHIPPED_ENSEMBLES)[:1], *single}
    if not (ROOT / card.CARDS[name]).is_file():
        pytest.skip(f"no card {card.CARDS[name]}: {name!r} is not shipped in this checkout")
    text = (ROOT / card.CARDS[name]).read_text()
    study_path = re.search(r"`experiments/(\w+/\w+)/report/report\.md`", text).group(1)
    model_file = ROOT / "src/ferlab/weights" / re.search(r"`ferlab/weights/([\w.]+)`",
                                                         text).group(1)
    folder = ROOT / "experiments" / study_path
    study = card._study(folder.name)
    report = json.loads((folder / "report/metrics.json").read_text())
    rerun = re.search(r"run \[`(\w+)`\]", text)  # the same commands on other hardware
    rerun = card._study(rerun.group(1)) if rerun else None
    assert model_file.name == SHIPPED_MODELS[name]
    assert card.render(study, report, model_file, card.stages(study), rerun, name) == text


@pytest.mark.parametrize(("flags", "vector"), [
    ("fpu sse2 avx avx2 fma", ", AVX2"), ("avx2 avx512f avx512bw", ", AVX-512"),
    ("avx2 avx512f avx512_bf16", ", AVX512-BF16"), ("avx512f avx512_bf16 amx_tile", ", AMX"),
    ("fpu sse2", ""),
])
def test_hardware_names_the_vector_unit_that_decides_bf16_speed(flags, vector):
    cpuinfo = (f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\n"
               f"processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n")
    assert _record_module().hardware(cpuinfo).endswith(f"CPU cores (AMD EPYC{vector})")


def _recorded_commands():
    for path in sorted((ROOT / "experiments").glob("*/*/study.json")):
        yield path.parent.relative_to(ROOT / "experiments").as_posix(), json.loads(
            path.read_text())["command"]


@pytest.mark.parametrize(("run", "command"), list(_recorded_commands()))
def test_every_recorded_command_still_composes(run, command):
    """Each run's command, as recorded, composes against today's configs: a recipe ferlab keeps
    (conf/experiment) or the study's own (experiments/<study>/experiment, named by
    --config-dir), and the experiment it names is the run's."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.config import CONFIG_DIR, register_resolvers

    args = command.split()
    assert args[:3] == ["python", "-m", "ferlab.train"], command
    args, searchpath = args[3:], []
    if args[0] == "--config-dir":
        folder = ROOT / args[1]
        assert (folder / "experiment").is_dir(), f"{run}: no recipes in {folder}"
        searchpath, args = [f"hydra.searchpath=[file://{folder}]"], args[2:]
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=args + searchpath, return_hydra_config=True)
    experiment = next(a.split("=", 1)[1] for a in args if a.startswith("experiment="))
    assert cfg.hydra.runtime.choices.experiment == experiment
    assert cfg.trainer.max_epochs >= 1 and cfg.model._target_.startswith("ferlab.")
    GlobalHydra.instance().clear()


def test_experiment_configs_are_few_flat_overlays_on_the_defaults():
    """conf/experiment holds the recipes a user reruns, each a flat overlay (no other experiment
    in its defaults); one-off trials live with their study."""
    from ferlab.config import CONFIG_DIR

    files = sorted((Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
    assert 1 <= len(files) <= 12
    for file in files:
        text = file.read_text()
        assert text.startswith("# @package _global_"), file
        block = (text.split("\ndefaults:\n", 1)[1].split("\n\n", 1)[0]
                 if "\ndefaults:" in text else "")
        defaults = re.findall(r"^  - (.*)$", block, re.M)
        assert all(d.startswith("override /") for d in defaults), (file, defaults)
        assert not re.search(r"^name:", text, re.M), f"{file}: the run is named after the file"


def test_no_record_holds_an_absolute_path():
    """Records name repository-relative paths only: nothing of the machine that ran them."""
    for path in (ROOT / "experiments").rglob("*.json"):
        text = path.read_text()
        assert not re.search(r'"/(work|home|root|tmp|Users|mnt)/', text), path


def test_a_run_inside_the_repository_is_recorded_by_its_relative_path(tmp_path, monkeypatch):
    record = _record_module()
    monkeypatch.setattr(record, "HERE", tmp_path / "experiments")
    run = tmp_path / "runs" / "r"
    (run / ".hydra").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    (run / "metrics.json").write_text(json.dumps({"epochs": 1, "test/ckpt": str(ckpt)}))
    (run / ".hydra" / "overrides.yaml").write_text("- model=vgg9\n")
    (run / ".hydra" / "config.yaml").write_text(
        "data: {num_classes: 7, train_splits: [train]}\ntrainer: {precision: 32-true}\n")
    study = json.loads((record.add("st/s", run, "q?", None) / "study.json").read_text())
    assert study["train"]["test/ckpt"] == "runs/r/checkpoints/best.ckpt"


def test_the_speed_accuracy_figure_is_drawn_from_the_benchmarks_record(tmp_path, monkeypatch):
    """docs/speed_accuracy.png comes from experiments/deployment/benchmark.json; its curve is
    the rows no other row beats on both speed and accuracy."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import speed_accuracy

    rows = [{"model": m, "engine": "ONNX Runtime int8", "tta": "none", "acc": a,
             "faces_s_batch1": f} for m, a, f in [("a", 0.70, 100), ("b", 0.72, 50),
                                                 ("c", 0.69, 90), ("fer", 0.66, 1900)]]
    assert [r["model"] for r in speed_accuracy.frontier(rows)] == ["fer", "a", "b"]
    record = json.loads((ROOT / "experiments/deployment/benchmark.json").read_text())
    best = speed_accuracy.draw(record, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    rows = record["classification"]
    assert best[0]["faces_s_batch1"] == max(r["faces_s_batch1"] for r in rows)
    assert max(r["acc"] for r in best) == max(r["acc"] for r in rows)
    assert any(r["model"] == "fer" for r in rows)
    assert (ROOT / "docs/speed_accuracy.png").is_file()
    assert "![PrivateTest accuracy against faces/s" in (ROOT / "docs/deployment.md").read_text()


def test_the_inference_benchmark_times_a_candidate_beside_the_shipped_models(
        tmp_path, monkeypatch, tiny_model_file, csv_root):
    """benchmark_inference.py --extra NAME=FILE: a model file not shipped gets section 4's rows
    (both TTAs) on the engine its file loads on, named NAME."""
    from ferlab.data import load_faces
    from ferlab.inference.model_file import export_onnx

    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import benchmark_inference

    onnx_file = export_onnx(tiny_model_file, tmp_path / "candidate.onnx", tta="none").path
    test = load_faces(csv_root, tmp_path / "cache").select("test")
    rows = benchmark_inference.classification_table(test.faces, test.labels, 4, [],
                                                    {"fast": str(onnx_file)})
    assert [(r["model"], r["engine"], r["tta"]) for r in rows] == [
        ("fast", "ONNX Runtime fp32", "none"), ("fast", "ONNX Runtime fp32", "flip")]
    assert all(0 <= r["acc"] <= 1 and r["faces_s_batch1"] > 0 for r in rows)
