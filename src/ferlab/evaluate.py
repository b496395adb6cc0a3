"""Evaluate a checkpoint: ``python -m ferlab.evaluate ckpt_path=<run dir or .ckpt>``.

Writes ``metrics.json`` and a confusion-matrix PNG per split to the output directory.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
import lightning as L
import matplotlib.pyplot as plt
import torch
from omegaconf import DictConfig

from ferlab.checkpoint import find_checkpoint, load_checkpoint, write_json
from ferlab.config import CONFIG_DIR
from ferlab.data import SPLITS, FER2013DataModule
from ferlab.data.sources import DataFormatError
from ferlab.metrics import classification_metrics, confusion_figure, confusion_matrix
from ferlab.module import EmotionModule

log = logging.getLogger(__name__)


def predict_split(module: EmotionModule, datamodule: FER2013DataModule, split: str,
                  trainer: L.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (N, C) and labels (N,) of one split, through the shared preprocessing."""
    datamodule.predict_split = split
    batches = trainer.predict(module, datamodule=datamodule)
    probs, labels = zip(*batches)
    return torch.cat(probs), torch.cat(labels)


def evaluate(cfg: DictConfig) -> dict[str, dict]:
    """Metrics and confusion matrices of a checkpoint on the requested splits."""
    ckpt = find_checkpoint(cfg.ckpt_path)
    module, run_cfg = load_checkpoint(ckpt)
    num_classes = run_cfg.data.num_classes
    datamodule = FER2013DataModule(root=cfg.data_root, num_classes=num_classes,
                                   eval_batch_size=cfg.batch_size, cache_dir=cfg.paths.cache)
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    output_dir = Path(cfg.output_dir)
    report: dict[str, dict] = {"checkpoint": {"path": str(ckpt.resolve()),
                                              "model": run_cfg.model._target_,
                                              "num_classes": num_classes}}
    for split in _check_splits(cfg.splits):
        probs, labels = predict_split(module, datamodule, split, trainer)
        metrics = classification_metrics(num_classes, split)(probs, labels)
        counts = confusion_matrix(num_classes)(probs.argmax(1), labels)
        report[split] = {k: float(v) for k, v in metrics.items()}
        report[split]["n"] = len(labels)
        report[split]["confusion_matrix"] = counts.tolist()
        fig = confusion_figure(counts, module.class_names,
                               title=f"{split}: acc {report[split][f'{split}/acc']:.4f}")
        output_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(output_dir / f"confusion_matrix_{split}.png")
        plt.close(fig)
        log.info("%s: %s", split, {k: round(v, 4) for k, v in report[split].items()
                                   if isinstance(v, float)})
    write_json(output_dir / "metrics.json", report)
    return report


def _check_splits(splits: Sequence[str]) -> list[str]:
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"Unknown split(s) {unknown}; choose from {list(SPLITS)}.")
    return list(splits)


def _run(cfg: DictConfig) -> None:
    try:
        report = evaluate(cfg)
    except (DataFormatError, FileNotFoundError) as err:  # incl. a missing data root
        log.error("%s", err)
        sys.exit(2)
    for split in cfg.splits:
        values = {k.split("/")[1]: v for k, v in report[split].items() if isinstance(v, float)}
        print(f"{split}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))
    print(f"report: {Path(cfg.output_dir) / 'metrics.json'}")


def main() -> None:
    hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")(_run)()


if __name__ == "__main__":
    main()
