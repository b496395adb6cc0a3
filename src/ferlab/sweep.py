"""Sweeps (Hydra multiruns, grid or Optuna): checks before the first job, a record per job, and
the summary of a whole sweep.

:class:`SweepCallback` is a Hydra callback (``hydra.callbacks`` in conf/hydra/default.yaml):
refuses a search whose objective no run reports or whose search space names a key that does not
exist, before the first job; writes ``job.json`` (status, error, overrides, the returned
objective) into every job's folder, also for a job that failed; and at the end of the multirun
writes the summary. :func:`summarize` builds the summary from the folders alone, so
``python -m ferlab.summarize <sweep dir>`` rebuilds it for any sweep, finished or cut off.

The summary, rewritten as each job ends, is ``summary.csv`` and ``summary.md`` (one row per
job: its overrides, final metrics, training time and status, best first, and the command that
reruns the best job), and ``summary.png`` (the objective against each swept parameter); for
an Optuna search also ``optuna_history.png`` and ``optuna_importances.png`` (Optuna's figures).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ferlab.config import read_recorded_overrides
from ferlab.files import atomic_write, write_json

log = logging.getLogger(__name__)

JOB_RECORD = "job.json"
SWEEP_RECORD = "sweep.json"  # what the sweep optimises and how (written before the first job)
# what train() returns (metrics.json), by stage: the names an objective can take
STAGE_METRICS = ("loss", "acc", "acc_top2", "acc_macro")
RUN_FIGURES = ("val/acc_best", "train/loss_epoch", "train/loss_step", "train/lr",
               "train/distill_loss", "epochs", "fit_seconds", "fit_seconds_total", "params")
# the figures the summary shows besides the objective, when the jobs have them
SHOWN = ("val/acc_best", "val/acc", "val/acc_macro", "val/loss", "test/acc", "test/acc_macro",
         "epochs", "fit_seconds_total")


def reported_metrics() -> set[str]:
    """The metric names a training run reports (and so a sweep can optimise)."""
    return {f"{s}/{m}" for s in ("train", "val", "test") for m in STAGE_METRICS} | set(RUN_FIGURES)


def check_search(cfg: DictConfig) -> None:
    """Refuse, before the first job, an objective that no run reports, or a swept key that is not
    in the config (a ``+key`` adds one on purpose) or a group option that does not exist."""
    metric = cfg.get("optimized_metric")
    known = reported_metrics()
    if metric is not None and metric not in known and not metric.startswith(
            ("val/recall/", "test/recall/")):
        raise ValueError(f"optimized_metric={metric} is not a figure a training run reports; "
                         f"choose one of {sorted(known)}.")
    from ferlab.config import CONFIG_DIR

    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    for key in params:
        if key.startswith("+") or (Path(CONFIG_DIR) / key).is_dir():
            options = Path(CONFIG_DIR) / key
            if options.is_dir():
                for option in _choices(str(params[key])):
                    if not (options / f"{option}.yaml").is_file():
                        raise ValueError(f"The search space sweeps {key} over {option!r}, which is "
                                         f"not an option of {key} (conf/{key}/: "
                                         f"{sorted(p.stem for p in options.glob('*.yaml'))}).")
            continue
        if OmegaConf.select(cfg, key.lstrip("~"), default=_ABSENT) is _ABSENT:
            raise ValueError(f"The search space names {key}, which is not a key of the config "
                             f"(mistyped? +{key} adds a new key on purpose).")


_ABSENT = object()


def _choices(value: str) -> list[str]:
    """The options a sweep value ("a,b", "choice(a, b)") lists."""
    override = OverridesParser.create().parse_overrides([f"x={value}"])[0]
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [str(override.value())]


# the studies of in-process Optuna searches, by name: their jobs report to them (the basic
# launcher runs jobs in the sweeper's process, so an in-memory study needs no storage)
_STUDIES: dict[str, Any] = {}
OPTUNA_SWEEPER = "hydra_plugins.ferlab_optuna_sweeper.OptunaSweeper"


def pruned(value: Any) -> bool:
    """Whether a job's outcome is Optuna's TrialPruned (by name: optuna is an extra)."""
    return type(value).__name__ == "TrialPruned"


def register_study(study: Any) -> None:
    """Make a running search's study reachable by its in-process jobs (:func:`job_trial`)."""
    _STUDIES[study.study_name] = study


def job_trial() -> Any:
    """The Optuna trial this sweep job runs, when it is a job of a pruned search (``pruner``
    set); else None. Reached through the in-process study or, from another process (joblib,
    SLURM), through the study's storage."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    sweeper = hydra.sweeper
    if sweeper.get("_target_") != OPTUNA_SWEEPER or sweeper.get("pruner") is None:
        return None
    import optuna
    from hydra.utils import instantiate

    from hydra_plugins.ferlab_optuna_sweeper import JOB_ATTR

    study = _STUDIES.get(sweeper.study_name)
    if study is None:
        if not sweeper.get("storage"):
            raise ValueError("This job of a pruned Optuna search runs outside its sweeper's "
                             "process and the study has no storage to reach it by; set "
                             "storage=sqlite:///runs/optuna.db (or an RDB URL).")
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage,
                                  pruner=instantiate(sweeper.pruner))
    job = f"{hydra.sweep.dir}#{hydra.job.num}"
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    frozen = next((t for t in running if t.user_attrs.get(JOB_ATTR) == job), None)
    if frozen is None:
        log.warning("No running trial of study %s belongs to job %s: it will not be pruned.",
                    study.study_name, job)
        return None
    return optuna.Trial(study, frozen._trial_id)


class SweepCallback(Callback):
    """Hydra callback: checks a search before its first job, records every job, summarises the
    sweep at its end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_search(config)
        sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
        record = {"optimized_metric": config.get("optimized_metric"),
                  "sweeper": {k: sweeper.get(k) for k in ("_target_", "direction", "storage",
                                                          "study_name", "n_trials", "params")}}
        write_json(Path(config.hydra.sweep.dir) / SWEEP_RECORD, record)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        output = Path(config.hydra.runtime.output_dir)
        value = getattr(job_return, "_return_value", None)
        record = {"status": job_return.status.name.lower(),
                  "overrides": list(job_return.overrides or []),
                  "objective": config.get("optimized_metric"),
                  "value": value if isinstance(value, (int, float)) else None}
        if record["status"] == "failed" and pruned(value):
            # stopped by the search's pruner: its last reported figure, and when
            record.update(status="pruned", value=getattr(value, "value", None),
                          epochs=getattr(value, "epochs", None), error=str(value))
        elif record["status"] == "failed":
            record["error"] = f"{type(value).__name__}: {value}"
        write_json(output / JOB_RECORD, record)
        # the summary so far: a sweep that is cut off (or still running) has one
        summarize(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if job_dirs(sweep_dir) if sweep_dir.is_dir() else []:
            log.info("Sweep summary: %s", summarize(sweep_dir)["md"])


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep (each holds Hydra's record of its overrides), in job order."""
    jobs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return sorted(jobs, key=lambda p: (int(p.name.split("_")[0]) if p.name.split("_")[0].isdigit()
                                       else math.inf, p.name))


def _job_row(job: Path) -> dict[str, Any]:
    overrides = read_recorded_overrides(job / ".hydra/overrides.yaml")
    record = json.loads((job / JOB_RECORD).read_text()) if (job / JOB_RECORD).is_file() else {}
    metrics_file = job / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    status = record.get("status") or ("completed" if metrics else "unfinished")
    row: dict[str, Any] = {"job": job.name, "status": status, "error": record.get("error", "")}
    for override in overrides:
        key, _, value = override.partition("=")
        row[f"override:{key.lstrip('+~')}"] = value
    row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    if status == "pruned":  # no metrics.json: the figure it was pruned on, and when
        row.setdefault(record.get("objective") or "val/acc_best", record.get("value"))
        row.setdefault("epochs", record.get("epochs"))
    row["overrides"] = " ".join(overrides)
    return row


def summarize(sweep_dir: str | os.PathLike, metric: str | None = None,
              direction: str | None = None) -> dict[str, Path]:
    """Write summary.csv, summary.md and the plots for a sweep directory; return their paths.
    ``metric`` and ``direction`` default to the sweep's own (its multirun.yaml)."""
    sweep_dir = Path(sweep_dir)
    jobs = job_dirs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} holds no sweep jobs (folders with "
                                ".hydra/overrides.yaml); pass the directory a multirun wrote.")
    record = _sweep_record(sweep_dir)
    metric = metric or record.get("optimized_metric") or "val/acc_best"
    sweeper = record.get("sweeper") or {}
    direction = direction or str(sweeper.get("direction") or
                                 ("minimize" if "loss" in metric else "maximize"))
    table = pd.DataFrame([_job_row(job) for job in jobs])
    swept = _swept_keys(table)
    for key in swept:
        numbers = pd.to_numeric(table[f"override:{key}"], errors="coerce")
        if numbers.notna().all():
            table[f"override:{key}"] = numbers
    if metric not in table:
        table[metric] = math.nan
    # completed jobs first, best first; a failed job's figures (a diverged run's) rank nothing
    table["_done"] = table["status"] == "completed"
    table = table.sort_values(["_done", metric], ascending=[False, direction == "minimize"],
                              na_position="last")
    shown = [c for c in dict.fromkeys([metric, *SHOWN]) if c in table]
    columns = ["job", *[f"override:{k}" for k in swept], *shown, "status", "error"]
    summary = table[columns].rename(columns={f"override:{k}": k for k in swept})
    with atomic_write(sweep_dir / "summary.csv") as handle:
        summary.to_csv(handle, index=False)
    best = table[table["status"] == "completed"].dropna(subset=[metric]).head(1)
    rerun = None
    if len(best):
        overrides = read_recorded_overrides(sweep_dir / best.iloc[0]["job"] /
                                            ".hydra/overrides.yaml")
        # one run: without the search's own settings (hparams_search, its storage)
        rerun = "python -m ferlab.train " + " ".join(
            shlex.quote(o) for o in overrides
            if o.split("=", 1)[0].lstrip("+~") not in ("hparams_search", "storage"))
    paths = {"csv": sweep_dir / "summary.csv", "md": sweep_dir / "summary.md"}
    folds = _across_folds(table, swept, metric)
    if folds is not None:
        paths["folds"] = sweep_dir / "folds.csv"
        with atomic_write(paths["folds"]) as handle:
            folds.to_csv(handle, index=False)
    plots = _plot(table, swept, metric, sweep_dir)
    plots += _optuna_plots(sweep_dir, sweeper, table, swept, metric, direction)
    with atomic_write(paths["md"]) as handle:
        handle.write(_markdown(sweep_dir, summary, metric, direction, rerun, plots, folds))
    for plot in plots:
        paths[plot.stem] = plot
    return paths


FOLD_KEY = "data.fold"


def _across_folds(table: pd.DataFrame, swept: list[str], metric: str) -> pd.DataFrame | None:
    """A k-fold sweep's figures over its folds (``-m data.fold='range(K)'``): mean and sample
    standard deviation of the metric and the test figures, per setting of the other swept keys
    (the protocol CK+ and JAFFE papers report)."""
    if FOLD_KEY not in swept:
        return None
    done = table[table["status"] == "completed"]
    others = [f"override:{k}" for k in swept if k != FOLD_KEY]
    measured = [m for m in dict.fromkeys([metric, "test/acc", "test/acc_macro"]) if m in done]
    rows = []
    for key, group in (done.groupby(others, dropna=False) if others else [((), done)]):
        key = key if isinstance(key, tuple) else (key,)
        row = {k.removeprefix("override:"): v for k, v in zip(others, key)}
        row["folds"] = len(group)
        for m in measured:
            values = pd.to_numeric(group[m], errors="coerce").dropna()
            row[f"{m} mean"] = values.mean() if len(values) else math.nan
            row[f"{m} sd"] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _sweep_record(sweep_dir: Path) -> dict:
    """The sweep's own record; for sweeps without one, Hydra's multirun.yaml (basic sweeper)."""
    try:
        if (sweep_dir / SWEEP_RECORD).is_file():
            record = json.loads((sweep_dir / SWEEP_RECORD).read_text())
        elif (sweep_dir / "multirun.yaml").is_file():
            config = yaml.safe_load((sweep_dir / "multirun.yaml").read_text()) or {}
            record = {"optimized_metric": config.get("optimized_metric"),
                      "sweeper": (config.get("hydra") or {}).get("sweeper", {})}
        else:
            return {}
    except (ValueError, yaml.YAMLError, AttributeError) as err:
        raise ValueError(f"{sweep_dir}: its sweep record is damaged ({type(err).__name__}); "
                         "summarize a directory a multirun wrote.") from None
    if not isinstance(record, dict):
        raise ValueError(f"{sweep_dir}: its sweep record is not a mapping.")
    return record


def _swept_keys(table: pd.DataFrame) -> list[str]:
    """The override keys whose values differ between jobs (what the sweep varied)."""
    keys = [c.removeprefix("override:") for c in table if c.startswith("override:")]
    return [k for k in keys if table[f"override:{k}"].nunique(dropna=False) > 1]


def _markdown(sweep_dir: Path, summary: pd.DataFrame, metric: str, direction: str,
              rerun: str | None, plots: list[Path], folds: pd.DataFrame | None = None) -> str:
    counts = summary["status"].value_counts().to_dict()
    lines = [f"# Sweep {sweep_dir.name}", "",
             f"{len(summary)} jobs ({', '.join(f'{n} {s}' for s, n in counts.items())}), sorted "
             f"by {metric} ({direction}).", ""]
    table = summary.copy()
    for column in table.select_dtypes("number"):
        table[column] = table[column].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    table = table.fillna("").astype(str)
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    lines.append("")
    if folds is not None and len(folds):
        measured = [c.removesuffix(" mean") for c in folds if c.endswith(" mean")]
        keys = [c for c in folds if c != "folds" and not c.endswith((" mean", " sd"))]
        lines += ["## Across folds (mean ± sd)", "",
                  "| " + " | ".join([*keys, "folds", *measured]) + " |",
                  "|" + "---|" * (len(keys) + 1 + len(measured))]
        for _, row in folds.iterrows():
            cells = [str(row[k]) for k in keys] + [str(int(row["folds"]))]
            cells += [f"{row[f'{m} mean']:.4f} ± {row[f'{m} sd']:.4f}" for m in measured]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if rerun:
        lines += ["Rerun the best job:", "", "```bash", rerun, "```", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _plot(table: pd.DataFrame, swept: list[str], metric: str, sweep_dir: Path) -> list[Path]:
    from matplotlib.figure import Figure  # no pyplot: the user's backend stays as it is

    done = table.dropna(subset=[metric])
    if not swept or done.empty:
        return []
    fig = Figure(figsize=(4 * len(swept), 3.5))
    axes = fig.subplots(1, len(swept), squeeze=False)
    for ax, key in zip(axes[0], swept):
        values = done[f"override:{key}"]
        numeric = pd.to_numeric(values, errors="coerce")
        x = numeric if numeric.notna().all() else values.astype(str)
        ax.scatter(x, done[metric])
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        if numeric.notna().all() and (numeric > 0).all() and numeric.max() / numeric.min() > 50:
            ax.set_xscale("log")
    fig.tight_layout()
    path = sweep_dir / "summary.png"
    fig.savefig(path, dpi=100)
    return [path]


def _optuna_plots(sweep_dir: Path, sweeper: dict, table: pd.DataFrame, swept: list[str],
                  metric: str, direction: str) -> list[Path]:
    """Optuna's optimisation history and parameter importances, from the study in its storage
    or, without one, from the jobs' records."""
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return []
    table = table[table["status"] == "completed"]
    import matplotlib
    import matplotlib.pyplot as plt  # Optuna's plots draw with pyplot
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, name = sweeper.get("storage"), sweeper.get("study_name")
    if storage and name:
        study = optuna.load_study(study_name=name, storage=storage)
    else:
        study = _study_from_table(table, swept, metric, direction)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return []
    # rc_context: Optuna's plot switches pyplot's style for the whole process; not past here
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # its interface
        ax = optuna_plots.plot_optimization_history(study)
        paths = [sweep_dir / "optuna_history.png"]
        ax.figure.tight_layout()
        ax.figure.savefig(paths[0], dpi=100)
        plt.close(ax.figure)
    if len(complete) >= 2 and len({t.value for t in complete}) > 1:
        paths.append(_plot_importances(study, sweep_dir / "optuna_importances.png"))
    return paths


def _plot_importances(study, path: Path) -> Path:
    """Optuna's parameter importances (mean decrease in impurity, seeded: the same bars for the
    same trials), drawn as bars on a figure of ferlab's own (no pyplot state)."""
    import optuna
    from matplotlib.figure import Figure

    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    fig = Figure(figsize=(7, 1.0 + 0.4 * len(importances)))
    ax = fig.subplots()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (Optuna, mean decrease in impurity)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _study_from_table(table: pd.DataFrame, swept: list[str], metric: str, direction: str):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study = optuna.create_study(direction=direction)
    done = table.dropna(subset=[metric])
    distributions = {}
    for key in swept:
        values = pd.to_numeric(table[f"override:{key}"], errors="coerce")
        if values.notna().all() and values.min() < values.max():
            distributions[key] = FloatDistribution(float(values.min()), float(values.max()))
        else:
            distributions[key] = CategoricalDistribution(
                sorted(table[f"override:{key}"].astype(str).unique()))
    for _, row in done.iterrows():
        params = {k: (float(row[f"override:{k}"]) if isinstance(d, FloatDistribution)
                      else str(row[f"override:{k}"])) for k, d in distributions.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=float(row[metric])))
    return study
