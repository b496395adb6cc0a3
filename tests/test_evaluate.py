"""python -m ferlab.evaluate: reports on FER2013 splits, shipped models and labelled folders."""

from __future__ import annotations

import json

import pytest

from ferlab.data import EMOTIONS
from ferlab.evaluate import evaluate
from ferlab.train import train
from tests.conftest import short_cfg


def test_evaluate_writes_report(make_cfg, tmp_path, csv_root):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.config import CONFIG_DIR

    out = tmp_path / "run"
    train(short_cfg(make_cfg, out, ["trainer.max_epochs=1", "test=false"]))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={out / 'checkpoints/last.ckpt'}",
                                         f"data_root={csv_root}", "device=cpu", "tta=flip",
                                         f"output_dir={tmp_path / 'eval'}"])
    report = evaluate(cfg)
    saved = json.loads((tmp_path / "eval/metrics.json").read_text())
    test = saved["datasets"]["test"]
    assert test["n"] == 14 and saved["datasets"]["val"]["n"] == 14
    assert test["acc"] == pytest.approx(report["datasets"]["test"]["acc"])
    assert sum(map(sum, test["confusion_matrix"])) == 14
    assert {"acc", "acc_macro", "acc_top2", "acc_top3", "nll", "ece", "per_class",
            "wrong_answer_rank", "six_class", "no_tta", "clean"} <= set(test)
    assert test["clean"]["removed"] == 0  # the synthetic faces are all different
    # the model as trained (prior=train, its figures above) and under a uniform class prior
    assert saved["prior"] == "train"
    uniform = test["uniform_prior"]
    assert set(uniform) == {"acc", "acc_macro", "recall"} and set(uniform["recall"]) == set(
        test["per_class"])
    assert uniform["acc_macro"] == pytest.approx(sum(uniform["recall"].values()) / 7)
    assert set(test["per_class"]["happy"]) == {"precision", "recall", "f1", "support"}
    for figure in ("confusion_counts", "confusion_normalised", "per_class", "reliability",
                   "wrong_answer_rank", "mistakes"):
        assert (tmp_path / f"eval/test_{figure}.png").stat().st_size > 1000
    text = (tmp_path / "eval/report.md").read_text()
    assert "| test | 14 |" in text and "![mistakes](test_mistakes.png)" in text
    assert "class prior: **train**" in text and "With the uniform class prior: acc" in text


def test_evaluate_takes_a_shipped_model_by_name_and_asks_for_a_missing_one(tmp_path, csv_root):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.artifacts import shipped_model_path
    from ferlab.config import CONFIG_DIR

    def cfg(*overrides):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("eval", overrides=[f"data_root={csv_root}", "device=cpu",
                                              "splits=[test]", f"output_dir={tmp_path / 'ev'}",
                                              *overrides])

    with pytest.raises(ValueError, match="Say what to evaluate: ckpt_path=.*cpu-trained"):
        evaluate(cfg())
    report = evaluate(cfg("ckpt_path=cpu-trained"))
    assert report["model"]["source"] == "cpu-trained"
    assert report["model"]["file"] == str(shipped_model_path("cpu-trained"))
    assert report["datasets"]["test"]["n"] == 14


def test_evaluate_on_a_labelled_folder(make_cfg, tmp_path, faces):
    """Cross-dataset: <root>/<class>/<image> with other class names, an unknown class and
    crops of other sizes, through the same report."""
    import cv2
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.config import CONFIG_DIR

    out = tmp_path / "run"
    train(short_cfg(make_cfg, out, ["trainer.max_epochs=1", "test=false"]))
    pixels, labels, _ = faces
    names = {"angry": "anger", "happy": "happiness", "surprise": "surprised", "sad": "sadness"}
    root = tmp_path / "ck"
    for i, (face, label) in enumerate(zip(pixels, labels)):
        emotion = EMOTIONS[label]
        if emotion in names:
            folder = root / names[emotion]
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(face, (96, 96)))
    (root / "contempt").mkdir()
    cv2.imwrite(str(root / "contempt" / "0.png"), pixels[0])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={out}", f"folder={root}", "device=cpu",
                                         f"output_dir={tmp_path / 'eval'}"])
    report = evaluate(cfg)
    ck = report["datasets"]["ck"]
    assert ck["n"] == 4 * 8 and ck["excluded_classes"] == {"contempt": 1}
    assert {c for c, v in ck["per_class"].items() if v["support"]} == set(names)
    assert "Excluded class folders" in (tmp_path / "eval/report.md").read_text()
    assert (tmp_path / "eval/ck_confusion_normalised.png").is_file()

