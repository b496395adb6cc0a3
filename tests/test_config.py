"""Config helpers: a resumed run's own overrides."""

from __future__ import annotations

import yaml

from ferlab.config import with_run_overrides


def test_resume_brings_back_the_latest_record_of_each_override(tmp_path):
    run = tmp_path / "run"
    first, later = run / ".hydra", run / ".hydra-resumed-2026-01-02_00-00-00"
    for folder, overrides in ((first, ["experiment=budget30_slim", "seed=7", "init_from=a.pt",
                                       "callbacks.timer.duration='00:01:00:00'"]),
                              (later, [f"resume={run}", "callbacks.timer.duration='00:02:00:00'",
                                       "+extra=1"])):
        folder.mkdir(parents=True)
        (folder / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    restored = ["experiment=budget30_slim", "callbacks.timer.duration='00:02:00:00'", "+extra=1"]
    assert with_run_overrides([f"resume={run}", "seed=8"]) == [*restored, f"resume={run}",
                                                                "seed=8"]
    ckpt = run / "checkpoints/last.ckpt"
    assert with_run_overrides(["seed=8", f"resume={ckpt}"]) == ["seed=8", *restored,
                                                                 f"resume={ckpt}"]
    for unchanged in (["seed=8"], ["-m", f"resume={run}"], [f"resume={tmp_path / 'elsewhere'}"],
                      ["resume=null"]):
        assert with_run_overrides(unchanged) == unchanged

