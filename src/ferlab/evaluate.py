"""Evaluate a checkpoint and write a report directory:

    python -m ferlab.evaluate ckpt_path=<run dir or .ckpt> [splits=[test,val]] [tta=flip]
    python -m ferlab.evaluate ckpt_path=... folder=/data/ckplus detect_faces=false
    python -m ferlab.evaluate ckpt_path=default tta=flip   # a model shipped with ferlab
    python -m ferlab.evaluate ckpt_path=[runs/a,runs/b.ckpt,m.onnx] tta=flip   # an ensemble

``metrics.json`` (accuracy, macro, top-2/3, per-class precision/recall/F1/support, NLL, ECE,
the six-class view, the clean-test view, the TTA change), figures and ``report.md``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ferlab import rundir
from ferlab.artifacts import SHIPPED_ENSEMBLES, SHIPPED_MODELS
from ferlab.config import CONFIG_DIR
from ferlab.data import SPLITS, load_faces, remap_labels, to_face
from ferlab.data.duplicates import duplicated_in
from ferlab.data.ferplus import load_votes, majority_labels
from ferlab.data.folders import read_labelled_folder
from ferlab.data.labels import class_names, label_map
from ferlab.data.sources import DataFormatError
from ferlab.files import write_json
from ferlab.inference.detect import make_detector
from ferlab.inference.images import ImageError, read_image
from ferlab.inference.recognizer import EmotionRecognizer
from ferlab.metrics import evaluation_metrics, fold_probabilities
from ferlab.progress import track
from ferlab.report import markdown, save_figures

log = logging.getLogger(__name__)
SHIPPED = (*SHIPPED_MODELS, *SHIPPED_ENSEMBLES)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on FER2013 splits or a labelled folder; write the report."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ValueError("Say what to evaluate: ckpt_path=<run dir, .ckpt, model file or ONNX "
                         "file from ferlab.export>, a list of them ([a,b]: an ensemble), or the "
                         f"name of a shipped model ({', '.join(SHIPPED)}).")
    source = cfg.ckpt_path
    if OmegaConf.is_list(source):
        source = [str(s) for s in source]
    recognizer = EmotionRecognizer(source, device=cfg.device, tta=cfg.tta,
                                   batch_size=cfg.batch_size,
                                   precision=cfg.get("precision", "fp32"),
                                   backend=cfg.get("backend", "auto"),
                                   prior=_prior(cfg.get("prior", "train")))
    classes = recognizer.classes
    out = Path(cfg.output_dir)
    report: dict[str, Any] = {
        "model": {"source": _named(source), "num_classes": len(classes),
                  "file": [str(m.source) for m in recognizer.models] if len(recognizer.models)
                  > 1 else str(recognizer.source),
                  "network": [_network_name(m) for m in recognizer.models] if len(
                      recognizer.models) > 1 else _network_name(recognizer.models[0]),
                  "backend": recognizer.backend, "classes": list(classes)},
        "tta": cfg.tta, "prior": recognizer.prior, "datasets": {},
    }
    figures = {}
    datasets = _datasets(cfg, classes, recognizer)
    rundir.start_writing()  # the model and the data are read: the report and log get written
    for name, data in datasets.items():
        faces, labels = data.pop("faces"), torch.as_tensor(data.pop("labels"))
        if len(labels) == 0:
            raise ValueError(f"{name}: no faces to evaluate ({data}).")
        probs = _predict(recognizer, faces, f"{name}: classifying")
        metrics = evaluation_metrics(probs, labels, classes)
        metrics.update(data.pop("info", {}))
        if cfg.tta != "none" and cfg.compare_tta:
            recognizer.tta = "none"
            plain = _predict(recognizer, faces, f"{name}: classifying without TTA")
            recognizer.tta = cfg.tta
            metrics["no_tta"] = _headline(plain, labels, classes)
        other = _other_prior(recognizer)
        if other is not None:  # the same faces under the other prior: accuracy, balanced acc
            main_prior, recognizer.prior = recognizer.prior, other
            moved = _predict(recognizer, faces, f"{name}: classifying with prior {other}")
            recognizer.prior = main_prior
            metrics[f"{other}_prior"] = _prior_view(moved, labels, classes)
        metrics.update(_coarser_views(probs, labels, classes))
        if "train_faces" in data:
            copies = duplicated_in(faces, data.pop("train_faces"))
            keep = torch.from_numpy(~copies)
            metrics["clean"] = {"removed": int(copies.sum()), "n": int(keep.sum()),
                                **_headline(probs[keep], labels[keep], classes)}
        report["datasets"][name] = metrics
        figures[name] = save_figures(out, name, faces, probs, labels, metrics, classes)
        log.info("%s: acc %.4f, macro %.4f, top-2 %.4f (n=%d)", name, metrics["acc"],
                 metrics["acc_macro"], metrics.get("acc_top2", float("nan")), metrics["n"])
    write_json(out / "metrics.json", report)
    (out / "report.md").write_text(markdown(report, figures))
    return report


def _predict(recognizer: EmotionRecognizer, faces, description: str) -> torch.Tensor:
    """The recognizer's probabilities, a few of its batches at a time for the progress bar
    (whole batches: the figures are those of one call)."""
    chunk = 8 * recognizer.batch_size
    starts = range(0, len(faces), chunk)
    return torch.from_numpy(np.concatenate([
        recognizer.predict_faces(faces[i:i + chunk])
        for i in track(starts, len(starts), description)]))


COARSER_VIEWS = {7: "seven_class", 6: "six_class"}
DATASETS = ("fer2013", "ferplus")


def _coarser_views(probs: torch.Tensor, labels: torch.Tensor,
                   classes: tuple[str, ...]) -> dict[str, Any]:
    """The figures in each class view coarser than the model's: an eight-class model's seven
    FER2013 classes (contempt's probability dropped, faces labelled contempt left out) and six
    (disgust folded into angry)."""
    views = {}
    for size, key in COARSER_VIEWS.items():
        if size >= len(classes):
            continue
        names = class_names(size)
        mapping = label_map(size)[:len(classes)]  # the model's class ids are vocabulary ids
        view_labels = torch.as_tensor(mapping[labels.numpy()])
        kept = view_labels >= 0
        views[key] = evaluation_metrics(fold_probabilities(probs[kept], mapping, size),
                                        view_labels[kept], names)
    return views


def _prior(value: Any) -> str | dict[str, float]:
    """prior=train|uniform|{class: frequency} from the command line."""
    return OmegaConf.to_container(value) if OmegaConf.is_dict(value) else str(value)


def _other_prior(recognizer: EmotionRecognizer) -> str | None:
    """The named prior the report also shows (uniform beside train, train beside any other),
    when every model records the prior it trained with."""
    if any(m.meta.get("prior") is None for m in recognizer.models):
        return None
    return "uniform" if recognizer.prior == "train" else "train"


def _prior_view(probs: torch.Tensor, labels: torch.Tensor, classes) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean per-class recall) and each class's recall."""
    m = evaluation_metrics(probs, labels, classes)
    return {"acc": m["acc"], "acc_macro": m["acc_macro"],
            "recall": {c: v["recall"] for c, v in m["per_class"].items()}}


def _named(source: str | list[str]) -> str | list[str]:
    """A source as the report names it: a shipped model's name as it is, a path normalised."""
    if isinstance(source, list):
        return [_named(s) for s in source]
    return source if source in SHIPPED else str(Path(source))


def _network_name(model) -> str:
    """The network's class, or "onnx" (with its precision) for an ONNX file."""
    if model.network is not None:
        return type(model.network).__name__
    return f"onnx ({model.meta.get('precision', 'fp32')})"


def _headline(probs: torch.Tensor, labels: torch.Tensor, classes) -> dict[str, float]:
    m = evaluation_metrics(probs, labels, classes)
    return {k: m[k] for k in ("acc", "acc_macro", "acc_top2") if k in m}


def _datasets(cfg: DictConfig, classes: tuple[str, ...],
              recognizer: EmotionRecognizer) -> dict[str, dict[str, Any]]:
    """{name: {"faces", "labels", ["train_faces"], ["info"]}} for the requested data."""
    if cfg.folder:
        loaded = read_labelled_folder(cfg.folder, classes, _face_loader(cfg, recognizer),
                                      class_map=OmegaConf.to_container(cfg.class_map),
                                      unreadable_errors=(ImageError, OSError))
        info = {"excluded_classes": loaded.excluded_classes, "no_face": len(loaded.no_face),
                "unreadable": loaded.unreadable}
        return {Path(cfg.folder).name: {"faces": loaded.faces, "labels": loaded.labels,
                                        "info": info}}
    unknown = [s for s in cfg.splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"Unknown split(s) {unknown}; choose from {list(SPLITS)}.")
    dataset = cfg.get("dataset", "fer2013")
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is not one of {list(DATASETS)}.")
    if dataset == "ferplus":
        table = load_votes(cfg.ferplus_root, cfg.votes, cfg.paths.cache)
    else:
        table = load_faces(cfg.data_root, cfg.paths.cache)
    train_faces = table.select("train").faces
    datasets = {}
    for split in cfg.splits:
        part = table.select(split)
        if dataset == "ferplus":  # the majority label, where the votes give one
            ids, keep = majority_labels(part.votes)
            faces, labels = part.faces[keep], remap_labels(ids, len(classes))
        else:
            faces, labels = part.faces, remap_labels(part.labels, len(classes))
        view = labels >= 0  # a face labelled contempt has no place in a 7- or 6-class model
        datasets[split] = {"faces": faces[view], "labels": labels[view]}
        if dataset == "ferplus":
            datasets[split]["info"] = {"faces_without_majority": int((~keep).sum()),
                                       "contempt_left_out": int((~view).sum())}
        if cfg.clean_test and split != "train":
            datasets[split]["train_faces"] = train_faces
    return datasets


def _face_loader(cfg: DictConfig, recognizer: EmotionRecognizer):
    """Whole images as faces (pre-cropped datasets), or the largest detected face."""
    if cfg.detect_faces:
        recognizer.detector = make_detector(cfg.detector)

    def load(path: Path) -> np.ndarray | None:
        if not cfg.detect_faces:
            return to_face(read_image(path, grey=True))
        found = recognizer.detect_faces(path)  # decodes as the detector needs (grey for Haar)
        return found[0][1] if found else None

    return load


def _run(cfg: DictConfig) -> None:
    try:
        report = evaluate(cfg)
    except (DataFormatError, OSError, ValueError) as err:  # incl. a missing data root
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            rundir.start_writing()
            raise
        log.error("%s", err)
        if not rundir.started():  # refused before anything was evaluated: the folder goes
            rundir.forget_refused_command(cfg.paths.runs)
        sys.exit(2)
    except BaseException:
        rundir.start_writing()  # an unexpected failure: keep its log for the diagnosis
        raise
    for name, m in report["datasets"].items():
        print(f"{name}: acc={m['acc']:.4f} acc_macro={m['acc_macro']:.4f} "
              f"acc_top2={m.get('acc_top2', float('nan')):.4f} n={m['n']}")
    print(f"report: {Path(cfg.output_dir) / 'report.md'}")


def main() -> None:
    rundir.check_output_folder(sys.argv[1:])
    hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")(_run)()


if __name__ == "__main__":
    main()
