"""Experiment trackers (``logger=tensorboard|csv|mlflow|wandb``, several at once with
``logger=[tensorboard,mlflow]``): building Lightning's loggers from the config, and what each is
given besides Lightning's own scalars (the config, the final figures, the confusion matrix).

Each ``conf/logger/<name>.yaml`` holds one entry, ``<name>: {_target_: <Lightning logger>,
...}``, so that several files compose side by side. Settings left null are ferlab's choice:
MLflow writes to a local store under ``paths.runs`` (``mlflow ui --backend-store-uri
sqlite:///runs/mlflow.db`` shows it), W&B runs offline; a single run is one run of the
experiment (MLflow) or group (W&B) named after the run, and the jobs of a sweep are runs of one
experiment or group per sweep. A resumed run goes on logging into the same tracker run (its id
is kept in ``<run dir>/trackers.json``)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from ferlab.config import flatten
from ferlab.files import write_json

log = logging.getLogger(__name__)

RECORD = "trackers.json"  # the tracker runs' ids, for resume=
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def build_loggers(cfg: DictConfig, output_dir: Path, resumed: bool) -> list[Logger]:
    """The loggers ``cfg.logger`` configures (none for ``logger=null``)."""
    node = cfg.get("logger")
    if not node:
        return []
    # a logger config of one's own may still be a single flat {_target_: ...}
    entries = {"logger": node} if "_target_" in node else {k: v for k, v in node.items() if v}
    group, run = _names(cfg, output_dir)
    ids = _recorded_ids(output_dir) if resumed else {}
    loggers = []
    for name, entry in entries.items():
        target = str(entry.get("_target_", ""))
        fills: dict[str, Any] = {}
        if target.endswith("MLFlowLogger"):
            runs = Path(cfg.paths.runs).expanduser().resolve()
            fills = {k: v for k, v in {
                "tracking_uri": f"sqlite:///{runs / 'mlflow.db'}",
                "artifact_location": str(runs / "mlartifacts"),
                "experiment_name": group, "run_name": run}.items() if entry.get(k) is None}
            if ids.get("mlflow"):
                fills["run_id"] = ids["mlflow"]
        elif target.endswith("WandbLogger"):
            fills = {k: v for k, v in {"group": group, "name": run,
                                       "save_dir": str(output_dir)}.items()
                     if entry.get(k) is None}
            if ids.get("wandb"):
                fills.update(id=ids["wandb"], resume="allow")
        loggers.append(instantiate(entry, **fills))
        log.debug("logger %s: %s", name, target)
    return loggers


def _names(cfg: DictConfig, output_dir: Path) -> tuple[str, str]:
    """(group, run): the run's name and folder, or for a sweep job the sweep and the job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"sweep {Path(HydraConfig.get().sweep.dir).name}", output_dir.name
    return str(cfg.name), output_dir.name


def _recorded_ids(output_dir: Path) -> dict[str, str]:
    """The tracker run ids a resumed run continues; a run folder's file is data, checked."""
    file = output_dir / RECORD
    if not file.is_file():
        return {}
    try:
        record = json.loads(file.read_text())
    except (ValueError, OSError) as err:
        raise ValueError(f"{file} is damaged ({type(err).__name__}); delete it to log the "
                         "resumed sitting into new tracker runs.") from None
    if not isinstance(record, dict) or not all(
            k in ("mlflow", "wandb") and isinstance(v, str) and _ID.match(v)
            for k, v in record.items()):
        raise ValueError(f"{file} is not a record ferlab wrote (tracker names to run ids); "
                         "delete it to log the resumed sitting into new tracker runs.")
    return record


def start(loggers: Iterable[Logger], cfg: DictConfig, output_dir: Path) -> None:
    """At the start of a run that passed its checks (in the process that writes the run's
    files): the config to every tracker, and the trackers' run ids into the run folder."""
    loggers = list(loggers)
    text = OmegaConf.to_yaml(cfg, resolve=True)
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    ids = {}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):  # its params go with the final figures
            logger.experiment.add_text("config", f"```yaml\n{text}\n```")
        elif isinstance(logger, MLFlowLogger):
            uri = str(logger._tracking_uri or "")
            if uri.startswith("sqlite:///"):  # sqlite makes no folders
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            client, run_id = logger.experiment, logger.run_id
            known = client.get_run(run_id).data.params
            changed = sorted(k for k, v in params.items() if k in known and known[k] != str(v))
            if changed:
                log.warning("MLflow keeps a run's first parameter values; this sitting's "
                            "differ for %s (the run's config.yaml artifact has them all).",
                            ", ".join(changed[:8]))
            logger.log_hyperparams({k: v for k, v in params.items() if k not in known})
            client.log_text(run_id, text, "config.yaml")
            ids["mlflow"] = run_id
        elif isinstance(logger, WandbLogger):
            logger.log_hyperparams(params)
            ids["wandb"] = logger.version
        else:
            logger.log_hyperparams(params)
    if ids:
        write_json(output_dir / RECORD, ids)


def finish(loggers: Iterable[Logger], cfg: DictConfig, metrics: dict[str, Any],
           output_dir: Path) -> None:
    """The run's final figures; TensorBoard's HParams view gets the config with them (tags
    under hp/ keep the metric curves clean); MLflow gets the checkpoints (best and last)."""
    final = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items()
             if isinstance(v, float) and k.split("/")[0] in ("val", "test")}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            params = OmegaConf.to_container(cfg, resolve=True)
            params["params"] = metrics["params"]
            logger.log_hyperparams(params, metrics=final)
        else:
            logger.log_metrics({**final, "hp/params": float(metrics["params"])})
        if isinstance(logger, MLFlowLogger) and (output_dir / "checkpoints").is_dir():
            logger.experiment.log_artifacts(logger.run_id, str(output_dir / "checkpoints"),
                                            "checkpoints")


def shows_figures(loggers: Iterable[Logger]) -> bool:
    """Whether any of the trackers takes figures (TensorBoard, MLflow, W&B)."""
    return any(isinstance(lg, (TensorBoardLogger, MLFlowLogger, WandbLogger)) for lg in loggers)


def log_figure(loggers: Iterable[Logger], tag: str, figure: Any, step: int) -> None:
    """A matplotlib figure (a confusion matrix) to every tracker that shows images."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, step, close=False)  # no pyplot to close
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_figure(logger.run_id, figure, f"{tag}/step{step:07d}.png")
        elif isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({tag: wandb.Image(figure), "trainer/global_step": step})
