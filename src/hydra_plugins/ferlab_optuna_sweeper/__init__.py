"""ferlab's Optuna sweeper (``hparams_search=optuna``): Optuna's ask-and-tell interface behind
Hydra's Sweeper, with pruning and a study that continues from its storage. Hydra takes sweepers
only from the ``hydra_plugins`` package, hence its place.

Each batch of ``n_jobs`` trials is asked of the study, launched as Hydra jobs (any launcher:
basic, joblib, submitit) with the sampled values as overrides, and told its result: the value
the job returned (``optimized_metric``), PRUNED when the job's pruning callback stopped it
(:class:`ferlab.callbacks.OptunaPruning`, on when ``pruner`` is set), FAIL when it raised.

The search space is Hydra's override grammar, as hydra-optuna-sweeper read it:
``interval(a, b)`` (float, or int when both ends are), ``tag(log, interval(a, b))``,
``choice(a, b, ...)``, ``range(a, b, step)``; a plain value is fixed for every trial.

With a storage (``sqlite:///runs/optuna.db``, or an RDB URL that several machines share), the
same command run again continues the study: its finished (and failed) trials count towards
``n_trials``; trials this machine's earlier sweeper left running (killed with it) are marked
failed and run again. Trials
that other machines' sweepers are running are left alone.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# trial user attributes: which sweep job runs the trial, and which sweeper process asked for it
JOB_ATTR, HOST_ATTR, PID_ATTR = "ferlab_job", "ferlab_host", "ferlab_pid"


class OptunaSweeper(Sweeper):
    """An Optuna study over Hydra overrides (see the module's text)."""

    def __init__(self, sampler: Any = None, pruner: Any = None, direction: str = "maximize",
                 storage: str | None = None, study_name: str = "ferlab", n_trials: int = 20,
                 n_jobs: int = 1, max_failure_rate: float = 1.0,
                 params: DictConfig | dict | None = None) -> None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction must be maximize or minimize; got "
                             f"{direction!r}.")
        if n_trials < 0 or n_jobs < 1 or not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper needs n_trials >= 0, n_jobs >= 1 and "
                             f"max_failure_rate in [0, 1]; got {n_trials}, {n_jobs}, "
                             f"{max_failure_rate}.")
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from ferlab.sweep import check_search, register_study

        assert self.config is not None and self.launcher is not None
        check_search(self.config)  # Hydra only warns when a callback raises: refuse here
        space, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + arguments)
        sweep_dir = str(self.config.hydra.sweep.dir)
        in_process = OmegaConf.select(self.config, "hydra.launcher._target_", default="") \
            .endswith("BasicLauncher")
        if self.pruner is not None and not self.storage and not in_process:
            raise ValueError("A pruned search whose trials run in other processes (this "
                             "launcher) needs a storage they can reach: storage=sqlite:///"
                             "runs/optuna.db, or an RDB URL for several machines.")
        if self.storage and str(self.storage).startswith("sqlite:///"):  # sqlite makes no folders
            Path(str(self.storage).removeprefix("sqlite:///")).parent.mkdir(parents=True,
                                                                           exist_ok=True)
        study = optuna.create_study(study_name=self.study_name, storage=self.storage,
                                    sampler=self.sampler,
                                    pruner=self.pruner or optuna.pruners.NopPruner(),
                                    direction=self.direction, load_if_exists=True)
        register_study(study)  # in-process jobs report to it (without a storage too)
        to_go = self._trials_to_go(study)
        log.info("Optuna %s: study %s (%s), sampler %s, pruner %s; %d trials to run.",
                 optuna.__version__, study.study_name, self.storage or "in memory",
                 type(study.sampler).__name__, type(study.pruner).__name__, to_go)
        job_idx, failures, launched = 0, 0, 0
        while to_go > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, to_go))]
            overrides = []
            for i, trial in enumerate(trials):
                trial.set_user_attr(JOB_ATTR, f"{sweep_dir}#{job_idx + i}")
                trial.set_user_attr(HOST_ATTR, socket.gethostname())
                trial.set_user_attr(PID_ATTR, os.getpid())
                overrides.append(tuple(f"{k}={v}" for k, v in {**trial.params, **fixed}.items()))
            returns = self.launcher.launch(overrides, initial_job_idx=job_idx)
            job_idx += len(returns)
            for trial, ret in zip(trials, returns):
                failures += not self._tell(study, trial, ret)
            launched += len(returns)
            to_go -= len(returns)
            if failures / launched > self.max_failure_rate:
                raise RuntimeError(f"{failures} of {launched} trials failed, more than "
                                   f"hydra.sweeper.max_failure_rate={self.max_failure_rate}; "
                                   "each failed job's job.json says why.")
        self._write_results(study, sweep_dir)

    def _trials_to_go(self, study: Any) -> int:
        """n_trials less the trials a stored study has finished; trials this machine's earlier
        sweeper left running (it was killed) are marked failed first."""
        from optuna.trial import TrialState

        from ferlab.files import process_alive

        if not self.storage:
            return self.n_trials
        # trials that failed on their own count; those a kill cut off are run again
        failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        host = socket.gethostname()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = trial.user_attrs
            pid = attrs.get(PID_ATTR)
            # this process is a new sweeper: a trial under its own pid is an earlier one's
            if attrs.get(HOST_ATTR) == host and not (
                    isinstance(pid, int) and pid != os.getpid() and process_alive(pid)):
                study.tell(trial.number, state=TrialState.FAIL)
                log.info("Trial %d was cut off by a kill of its sweeper: marked failed, and run "
                         "again.", trial.number)
        done = len(study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED)))
        to_go = max(0, self.n_trials - done - failed)
        log.info("Study %s in %s: %d trials finished, %d failed; %d of n_trials=%d to go.",
                 study.study_name, self.storage, done, failed, to_go, self.n_trials)
        return to_go

    def _tell(self, study: Any, trial: Any, ret: Any) -> bool:
        """Tell the study how a job ended; False when it failed."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        from ferlab.sweep import pruned

        value = getattr(ret, "_return_value", None)
        if ret.status == JobStatus.COMPLETED and isinstance(value, (int, float)) \
                and value == value:  # not NaN
            study.tell(trial, float(value))
            return True
        if pruned(value):
            study.tell(trial, state=TrialState.PRUNED)
            log.info("Trial %d pruned (%s).", trial.number, value)
            return True
        study.tell(trial, state=TrialState.FAIL)
        log.warning("Trial %d failed: %s", trial.number,
                    f"{type(value).__name__}: {value}" if isinstance(value, BaseException)
                    else f"it returned {value!r}, not a number")
        return False

    def _write_results(self, study: Any, sweep_dir: str) -> None:
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
                  for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        results: dict[str, Any] = {"name": "optuna", "study": study.study_name, "trials": counts}
        if complete:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value)
            log.info("Best value %s with %s (trials: %s)", best.value, best.params, counts)
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), Path(sweep_dir) / "optimization_results.yaml")


def search_space(arguments: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Optuna distributions of the swept keys and the fixed values of the others."""
    space, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = override.get_value_element_as_str()
    return space, fixed


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(
            transformer=Transformer.encode)))
    if override.is_range_sweep():
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            # range's stop is exclusive; Optuna's high is inclusive
            return FloatDistribution(value.start, value.stop - value.step, step=value.step)
        return IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step))
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: Optuna takes interval, choice or range sweeps.")
