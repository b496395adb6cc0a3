"""The experiments record stays generated from its files, never typed by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _record_module():
    spec = importlib.util.spec_from_file_location("record", ROOT / "experiments/record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_studies_table_matches_the_study_files():
    record = _record_module()
    text = (ROOT / "experiments/README.md").read_text()
    block = text.split(record.BEGIN, 1)[1].split(record.END, 1)[0].strip()
    assert block == record.table()


def test_every_later_stage_names_a_recorded_study():
    for path in (ROOT / "experiments").glob("*/study.json"):
        study = json.loads(path.read_text())
        if "after" in study:
            assert (ROOT / "experiments" / study["after"] / "study.json").is_file(), path
            assert "init_from=" in study["command"], path
