"""Time to the same best val accuracy of Optuna searches, read from their studies' storages:

    python experiments/toolbox_cpu30/time_to_best.py sqlite:///runs/a.db sqlite:///runs/b.db

For each study (named ``ferlab``): trials by state, the final best value, the wall time from its
first trial's start to the trial that first reached the level every study reaches (the lowest
of the final bests), and its whole time."""

from __future__ import annotations

import sys

import optuna


def main(storages: list[str]) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = {s: optuna.load_study(study_name="ferlab", storage=s) for s in storages}
    bests = {s: max(t.value for t in st.trials if t.state.name == "COMPLETE")
             for s, st in studies.items()}
    level = min(bests.values())
    print(f"level both reach: val/acc_best {level:.4f}")
    print("| study | complete | pruned | failed | best | time to the level | whole search |")
    print("|---|---|---|---|---|---|---|")
    for storage, study in studies.items():
        trials = sorted(study.trials, key=lambda t: t.datetime_start)
        start = trials[0].datetime_start
        states = [t.state.name for t in trials]
        reached = min(t.datetime_complete for t in trials
                      if t.state.name == "COMPLETE" and t.value >= level)
        end = max(t.datetime_complete for t in trials)
        print(f"| {storage} | {states.count('COMPLETE')} | {states.count('PRUNED')} | "
              f"{states.count('FAIL')} | {bests[storage]:.4f} | "
              f"{(reached - start).total_seconds() / 60:.1f} min | "
              f"{(end - start).total_seconds() / 60:.1f} min |")


if __name__ == "__main__":
    main(sys.argv[1:])
