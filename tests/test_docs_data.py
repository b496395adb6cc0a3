"""docs/data.md's commands, exactly as written, on generated sets: FER+, a folder set, five
subject-independent folds fine-tuned from the shipped model, a mixture."""

from __future__ import annotations

import json
import shlex

import numpy as np

from tests.conftest import doc_commands, run_cli
from tests.data.test_folder_sets import write_set
from tests.fer_fixtures import make_faces, make_votes, write_ferplus_folders


def test_the_data_guides_commands_as_written(tmp_path, csv_root):
    commands = doc_commands("docs/data.md")
    assert commands[0] == "export FERLAB_FERPLUS=/path/to/ferplus"
    faces, labels, usages = make_faces()
    ferplus = write_ferplus_folders(tmp_path / "ferplus", faces, make_votes(labels), usages)
    write_set(tmp_path / "data/rafdb/train", subjects=4)
    write_set(tmp_path / "data/rafdb/test", subjects=2)
    for root in (tmp_path / "data/rafdb/train", tmp_path / "data/rafdb/test"):
        (root / "5").rename(root / "surprised")  # the guide's sets name classes in words
    write_set(tmp_path / "data/ckplus", subjects=10)
    (tmp_path / "data/ckplus/5").rename(tmp_path / "data/ckplus/surprise")
    env = {"FERLAB_FERPLUS": str(ferplus)}
    for command in commands[1:]:
        words = shlex.split(command)
        result = run_cli(words[3:], tmp_path, data=csv_root, env=env,
                         module=words[2])
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    runs = tmp_path / "runs"
    # the first vgg9 run (folders are named by time) is the FER+ one; the mixture comes later
    ferplus_run = json.loads(sorted((runs / "vgg9").glob("*/metrics.json"))[0].read_text())
    assert "test/recall/contempt" in ferplus_run  # eight classes
    [report] = (runs / "eval").glob("*/metrics.json")
    assert json.loads(report.read_text())["datasets"]["test"]["n"] > 0
    [folds] = runs.rglob("folds.csv")  # the k-fold multirun's summary
    table = folds.read_text().splitlines()
    assert table[0].startswith("folds,") and table[1].startswith("5,")
    summary = (folds.parent / "summary.md").read_text()
    assert "Across folds (mean ± sd)" in summary
    [job_log] = folds.parent.glob("0_*/train.log")  # the first fold: the head starts afresh
    assert "except the classifier head" in job_log.read_text()
    mixture = [json.loads(p.read_text()) for p in runs.rglob("metrics.json")]
    assert any("test/raf/acc" in m and "test/fer2013/acc" in m for m in mixture)
    assert np.isfinite([m.get("test/acc", 0) for m in mixture]).all()
