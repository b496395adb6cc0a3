"""Record a run of a study and regenerate the tables of experiments/ from the records.

    python tools/record.py add STUDY/RUN --run runs/vgg9_e24/<time> [--eval runs/eval/<time>] \
        --question "What does vgg9 reach in 24 epochs on 2 CPU cores?" [--hardware "1 GPU ..."]
    python tools/record.py retest RUN [--eval runs/eval/<time>]
    python tools/record.py table

A study is a folder of experiments/ (its README.md: the question, the plan fixed before the
runs, the result and the conclusion); each of its runs has a folder with ``study.json`` (the
question, the exact command, hardware, the run's metrics) and, where evaluated, ``report/``.
A recipe that is not in conf/experiment/ lives in the study's own ``experiment/``
folder, and the command runs it with ``--config-dir experiments/STUDY``.

``add`` copies the run's metrics.json, its Hydra overrides (the exact command) and, when
given, an evaluation's numbers (metrics.json, and report.md without its figures: no images
are committed) into experiments/STUDY/RUN/; ``retest`` replaces a run's in-run test
figures by those of ``python -m ferlab.evaluate`` on the same checkpoint without TTA (the
in-run test of EMA runs recorded before commit 27d16e4 measured the raw, not the averaged,
weights); ``table`` rebuilds the tables in experiments/README.md and in each study's README.md
from every study.json. Numbers are never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "experiments"
BEGIN, END = "<!-- studies:begin -->", "<!-- studies:end -->"


def hardware(cpuinfo: str | None = None) -> str:
    """"2 CPU cores (AMD EPYC, AVX2)": the processor and its widest vector unit, which decides
    whether bf16 is fast (AVX512-BF16, AMX), slower than fp32 (AVX-512) or 16x slower (AVX2)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    model = fields.get("model name") or platform.processor()
    flags = set(fields.get("flags", "").split())
    vector = next((name for flag, name in (("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16"),
                                            ("avx512f", "AVX-512"), ("avx2", "AVX2"))
                   if flag in flags), None)
    return f"{os.cpu_count()} CPU cores ({model}{', ' + vector if vector else ''})"


# overrides that only say where a run reads or writes, how it reports progress or whether it
# tests on PrivateTest when it ends: they do not change the model, so the command leaves them out
NOT_THE_RECIPE = ("hydra.", "callbacks.progress_bar", "+trainer.enable_progress_bar",
                  "trainer.enable_progress_bar", "paths.",
                  "data.root=", "name=", "test=")


def numbers_only(report: str) -> str:
    """An evaluation's report.md without its figures, which the record leaves out to keep the
    repository small (``python -m ferlab.evaluate`` on the model draws them again)."""
    lines = [line for line in report.splitlines() if not line.startswith("![")]
    lines.insert(1, "\n(Figures left out of the record to keep the repository small: "
                    "`python -m ferlab.evaluate` on the model rebuilds them.)")
    return "\n".join(lines) + "\n"


def find(name: str) -> Path:
    """The folder of run NAME (its folder's name; names are unique across studies)."""
    found = [p.parent for p in HERE.glob("*/*/study.json") if p.parent.name == name]
    if len(found) != 1:
        raise SystemExit(f"no run {name!r} in {HERE}/<study>/" if not found else
                         f"run name {name!r} is in {len(found)} studies: {found}")
    return found[0]


def _relative(value):
    """A path under the repository as a repository-relative one (records name no machine's
    folders); any other value as it is."""
    if isinstance(value, str) and os.path.isabs(value):
        try:
            return Path(value).resolve().relative_to(HERE.parent.resolve()).as_posix()
        except ValueError:
            return value
    return value


def describe_data(data: dict) -> str:
    """The data a run trained on, as the tables name it: the set, its splits, its class view."""
    kind = str(data.get("_target_", "")).rsplit(".", 1)[-1]
    name = {"FERPlusDataModule": f"FER+ ({data.get('labels')} targets, votes from "
                                 f"{data.get('votes')})",
            "FolderDataModule": "folder set", "MixtureDataModule":
                f"mixture of {', '.join(data.get('sets') or {})}"}.get(kind, "FER2013")
    return f"{name} {'+'.join(data['train_splits'])}, {data['num_classes']} classes"


def add(name: str, run: Path, question: str, eval_dir: Path | None,
        after: str | None = None, hardware_text: str | None = None) -> Path:
    parts = Path(name).parts
    if len(parts) != 2 or any(p in ("..", ".") for p in parts):
        raise SystemExit(f"name the run as STUDY/RUN (a study folder of experiments/ and the "
                         f"run's folder in it); got {name!r}")
    study = HERE / name
    taken = [p.parent for p in HERE.glob(f"*/{parts[1]}/study.json") if p.parent != study]
    if taken:
        raise SystemExit(f"a run named {parts[1]!r} is already recorded in {taken[0]}: run "
                         "names are unique (other records link to them by name)")
    if not (run / "metrics.json").is_file():  # checked before anything is written
        raise SystemExit(
            f"{run} has no metrics.json: the run did not finish (still running, or killed before "
            "its end). Record a finished run, or one stopped by callbacks.timer.duration, which "
            "writes metrics.json; go on with a cut run with `resume=<run dir>` first.")
    study.mkdir(parents=True, exist_ok=True)
    metrics = {k: _relative(v) for k, v in json.loads((run / "metrics.json").read_text()).items()}
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    # a sitting's time budget (callbacks.timer.duration) is not the recipe of a run that was
    # resumed on to its last epoch; it stays in the command of a run that it cut short
    finished = metrics.get("epochs") == config["trainer"].get("max_epochs")
    skip = NOT_THE_RECIPE + (("callbacks.timer.duration=",) if finished else ())
    command = "python -m ferlab.train " + " ".join(o for o in overrides if not o.startswith(skip))
    if (study.parent / "experiment").is_dir():  # the study's own recipes
        command = command.replace("ferlab.train ", f"ferlab.train --config-dir "
                                  f"{study.parent.relative_to(HERE.parent).as_posix()} ", 1)
    data = config["data"]
    record = {"question": question, "command": command.strip(),
              "hardware": hardware_text or hardware(),
              "precision": str(config["trainer"]["precision"]),
              "data": describe_data(data), "train": metrics}
    if "seed" in config:
        record["seed"] = config["seed"]
    if "val" in data["train_splits"]:  # val numbers would be training numbers
        record["val_in_training"] = True
    if after is not None:  # a later stage (init_from) of another study's model
        find(after)  # exits naming what is missing
        record["after"] = after
    if eval_dir is not None:
        report = json.loads((eval_dir / "metrics.json").read_text())
        record["eval"] = {"tta": report["tta"],
                          **{k: {m: v[m] for m in ("acc", "acc_macro", "acc_top2", "n")}
                             for k, v in report["datasets"].items()}}
        target = study / "report"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir()
        _keep_evaluation(report, eval_dir, target)
    (study / "study.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return study


def deployment(name: str, eval_dir: Path) -> Path:
    """Keep the evaluation of a shipped int8 file or ensemble (``python -m ferlab.evaluate
    ckpt_path=NAME tta=flip splits=[test]``) in experiments/deployment/NAME/, where the model
    cards read it: metrics.json without the machine's file paths, report.md without figures."""
    report = json.loads((eval_dir / "metrics.json").read_text())
    if report["model"]["source"] != name:
        raise SystemExit(f"{eval_dir} evaluated {report['model']['source']!r}, not {name!r}")
    target = HERE / "deployment" / name
    target.mkdir(parents=True, exist_ok=True)
    _keep_evaluation(report, eval_dir, target)
    return target


def _keep_evaluation(report: dict, eval_dir: Path, target: Path) -> None:
    """An evaluation's metrics.json (without the machine's file path of the model) and its
    report.md (without figures) in ``target``."""
    report.get("model", {}).pop("file", None)  # an absolute path on the machine that ran it
    (target / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (target / "report.md").write_text(numbers_only((eval_dir / "report.md").read_text()))


def retest(name: str, eval_dir: Path | None = None) -> Path:
    """Replace NAME's in-run test figures by an evaluation of the checkpoint it tested.

    ``eval_dir`` defaults to the study's own report; its figures without TTA (``no_tta``, or
    the whole report when it ran with ``tta=none``) are used. The replaced figures stay in
    the study under ``test_raw_weights``.
    """
    path = find(name) / "study.json"
    s = json.loads(path.read_text())
    eval_dir = eval_dir or path.parent / "report"
    ckpt = s["train"].get("test/ckpt")
    if ckpt is None:
        raise SystemExit(f"study {name} has no in-run test (train test/ckpt) to replace")
    how = (f"Evaluate that checkpoint: python -m ferlab.evaluate ckpt_path={ckpt} splits=[test] "
           "tta=none, then pass its output folder with --eval.")
    if not (eval_dir / "metrics.json").is_file():
        raise SystemExit(f"{eval_dir} holds no evaluation (metrics.json). {how}")
    report = json.loads((eval_dir / "metrics.json").read_text())
    source, root = report["model"]["source"], HERE.parent  # the repository's root
    if (root / source).resolve() != (root / ckpt).resolve():
        raise SystemExit(f"{eval_dir} evaluated {source}, not the checkpoint study {name} was "
                         f"tested on. {how}")
    test = report["datasets"].get("test", {})
    plain = test if report["tta"] == "none" else test.get("no_tta")
    if not plain:
        raise SystemExit(f"{eval_dir} has no PrivateTest figures without TTA. {how}")
    figures = {f"test/{k}": plain[k] for k in ("acc", "acc_macro", "acc_top2")}
    if report["tta"] == "none":  # per-class recall is only in a report without TTA
        figures.update({f"test/recall/{c}": v["recall"] for c, v in test["per_class"].items()})
    old = {k: v for k, v in s["train"].items() if k.startswith("test/") and k != "test/ckpt"}
    s.setdefault("test_raw_weights", old)  # a second retest keeps the first figures
    s["train"] = {k: v for k, v in s["train"].items() if k not in old} | figures
    s["test_from"] = (f"python -m ferlab.evaluate of test/ckpt without TTA ({eval_dir.name}); "
                      "the in-run figures it replaced are under test_raw_weights")
    path.write_text(json.dumps(s, indent=2, sort_keys=True) + "\n")
    return path


def train_seconds(train: dict) -> float:
    """A run's training time: all of ``trainer.fit`` for a run made in one sitting; for a run
    resumed over several sittings (``resume=``), the Timer's sum over them, since ``fit_seconds``
    is then the last sitting's alone (each sitting's start-up, about a minute, is not in it)."""
    return max(train.get("fit_seconds", 0), train.get("fit_seconds_total", 0))


def stages(study: dict) -> list[dict]:
    """The study and every study whose model it started from (``after``), first stage first."""
    chain, seen = [study], set()
    while "after" in chain[0]:
        name = chain[0]["after"]
        if name in seen:
            raise SystemExit(f"the 'after' links of the studies form a loop through {name!r}")
        seen.add(name)
        chain.insert(0, json.loads((find(name) / "study.json").read_text()))
    return chain


def table(study: str | None = None) -> str:
    """The runs of every study (links relative to experiments/), or of one study (links
    relative to its folder)."""
    rows = ["| run | question | command | data | epochs | train time | hardware "
            "| val acc (best) | test acc | eval (TTA) test / val | eval balanced acc, test |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(HERE.glob(f"{study or '*'}/*/study.json")):
        s = json.loads(path.read_text())
        t = s["train"]
        chain = [stage["train"] for stage in stages(s)]  # earlier stages first
        epochs = "+".join(str(stage.get("epochs", "")) for stage in chain)
        minutes = "+".join(f"{train_seconds(stage) / 60:.0f}" for stage in chain)
        ev = s.get("eval")
        val_best = f"{t.get('val/acc_best', float('nan')):.4f}"
        ev_text = (f"{ev['test']['acc']:.4f} / {ev['val']['acc']:.4f} ({ev['tta']})"
                   if ev and "test" in ev and "val" in ev else
                   f"{ev['test']['acc']:.4f} / - ({ev['tta']})" if ev and "test" in ev else "")
        if s.get("val_in_training"):
            val_best, ev_text = "- (val in training)", ev_text.replace(
                f" / {ev['val']['acc']:.4f}", " / -") if ev and "val" in ev else ev_text
        test = f"{t['test/acc']:.4f}" if "test/acc" in t else "-"
        # balanced accuracy: the mean of the per-class recalls (torchmetrics' macro accuracy)
        balanced = f"{ev['test']['acc_macro']:.4f}" if ev and "test" in ev else "-"
        link = path.parent.relative_to(HERE / study if study else HERE).as_posix()
        rows.append(
            f"| [{path.parent.name}]({link}/) | {s['question']} | "
            f"`{s['command']}` | {s.get('data', '')} | {epochs} | {minutes} min "
            f"| {s['hardware']} | {val_best} | {test} | {ev_text} | {balanced} |")
    return "\n".join(rows)


def write_table() -> None:
    """experiments/README.md's table of every run, and each study README's of its own."""
    readmes = [(HERE / "README.md", None)] + [
        (p, p.parent.name) for p in sorted(HERE.glob("*/README.md")) if BEGIN in p.read_text()]
    for readme, study in readmes:
        block = f"{BEGIN}\n{table(study)}\n{END}"
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _, block=block: block,
                      readme.read_text(), flags=re.S)
        readme.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add")
    a.add_argument("name", metavar="STUDY/RUN")
    a.add_argument("--run", type=Path, required=True)
    a.add_argument("--eval", type=Path)
    a.add_argument("--question", required=True)
    a.add_argument("--after", metavar="STUDY",
                   help="the study whose model this run started from (init_from)")
    a.add_argument("--hardware", help="where the run trained, when not on this machine's CPUs")
    r = sub.add_parser("retest", help="replace the in-run test figures by an evaluation of "
                                      "the same checkpoint without TTA")
    r.add_argument("name")
    r.add_argument("--eval", type=Path,
                   help="a ferlab.evaluate folder (default: the study's own report)")
    d = sub.add_parser("deployment", help="keep the evaluation of a shipped int8 file or "
                                          "ensemble for the model cards")
    d.add_argument("name")
    d.add_argument("--eval", type=Path, required=True)
    sub.add_parser("table")
    args = parser.parse_args()
    if args.cmd == "add":
        study = add(args.name, args.run, args.question, args.eval, args.after, args.hardware)
        print(f"recorded {study}")
    elif args.cmd == "retest":
        print(f"retested {retest(args.name, args.eval)}")
    elif args.cmd == "deployment":
        print(f"kept {deployment(args.name, args.eval)}")
        return
    write_table()


if __name__ == "__main__":
    main()
