"""ferlab's Optuna sweeper: hydra-optuna-sweeper, resumable from its storage
(``hparams_search=optuna``; ``pip install ferlab[search]``). Hydra takes sweepers only from the
``hydra_plugins`` package, hence its place.

The plugin's sweeper asks for ``n_trials`` new trials each time it runs, and a trial that a kill
cut off stays "running" in the study for ever. With a storage, this sweeper first marks such
trials failed and counts the trials the study has already finished, so that the same command run
again after a kill runs only the trials still missing. Everything else is the plugin's own.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # without ferlab[search]: Hydra still imports this module when it looks for
    OptunaSweeper = object  # plugins, and a class that is not a Plugin is not registered

log = logging.getLogger(__name__)


class ResumableOptunaSweeper(OptunaSweeper):
    """The Optuna sweeper, continuing a stored study rather than adding n_trials to it."""

    def sweep(self, arguments: list[str]) -> Any:
        import optuna
        from optuna.trial import TrialState

        impl = self.sweeper
        if impl.storage:
            if str(impl.storage).startswith("sqlite:///"):  # sqlite makes no folders
                Path(str(impl.storage).removeprefix("sqlite:///")).parent.mkdir(
                    parents=True, exist_ok=True)
            try:
                study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
            except KeyError:  # a new study
                study = None
            if study is not None:
                cut_off = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                for trial in cut_off:
                    study.tell(trial.number, state=TrialState.FAIL)
                done = len(study.get_trials(deepcopy=False, states=(
                    TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))) - len(cut_off)
                log.info("Study %s in %s: %d trials finished, %d cut off by a kill (now failed); "
                         "%d of n_trials=%d to go.", impl.study_name, impl.storage, done,
                         len(cut_off), max(0, impl.n_trials - done), impl.n_trials)
                impl.n_trials = max(0, impl.n_trials - done)
        return super().sweep(arguments)
