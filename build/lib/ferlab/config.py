"""Where the Hydra configs live and the resolvers they use."""

from __future__ import annotations

import functools
import hashlib
import re
from datetime import datetime
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from ferlab.artifacts import is_allowed_target, targets

# the Hydra configs ship inside the package: a wheel install finds them as an editable one does
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def run_dir(resume: str | None, default: str) -> str:
    """The output directory of a run: the resumed run's own directory, else ``default``."""
    if resume is None:
        return default
    path = Path(resume).expanduser()
    # a checkpoint file lives in <run dir>/checkpoints/
    return str(path.parent.parent if path.suffix == ".ckpt" else path)


def run_name(experiment: str | None, model: str) -> str:
    """A run's default name: its experiment's (``experiment=vgg8_gap_mix``), else its model's."""
    return Path(experiment).name if experiment else model


def job_subdir(num: int, overrides: str) -> str:
    """A sweep job's folder: its number and what it overrides, as one path component (a value
    holding a ``/`` would nest folders) of a length every file system takes."""
    name = f"{num}_{overrides}" if overrides else str(num)
    name = re.sub(r"[^\w.,=+\-\[\]]", "_", name)
    if len(name) > 120:  # the start, and a digest of the whole so that names stay distinct
        name = f"{name[:110]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def config_subdir(resume: str | None) -> str:
    """Hydra's record folder; a resumed run keeps the original run's record untouched. The
    same name however often it is resolved in a process (Hydra resolves it again whenever
    hydra.output_subdir is read: a clock read each time would name another folder)."""
    if resume is None:
        return ".hydra"
    return f".hydra-resumed-{_started():%Y-%m-%d_%H-%M-%S}"


@functools.cache
def _started() -> datetime:
    return datetime.now()


def override_key(override: str) -> str:
    """The key a command-line override sets: ``+a.b=1``, ``~a.b`` and ``a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def override_value(args: list[str], key: str) -> str | None:
    """The value a command line sets ``key`` to (quotes stripped), if it sets it."""
    return next((a.split("=", 1)[1].strip("'\"") for a in args
                 if override_key(a) == key and "=" in a), None)


def resume_argument(args: list[str]) -> str | None:
    """The run directory or checkpoint that ``resume=...`` names on a command line, if any."""
    value = override_value(args, "resume")
    return value if value and value != "null" else None


def with_run_overrides(args: list[str]) -> list[str]:
    """Command-line arguments for ``resume=<run dir>``: the run's own overrides come back from its
    Hydra records (the first sitting's ``.hydra`` and every later ``.hydra-resumed-*``, the later
    winning), and the ones given now win over them, so that ``resume=`` alone continues a run with
    its recipe. ``init_from`` is not brought back (a resumed run has its weights already). Other
    arguments, sweeps (``-m``) and a checkpoint outside a run directory are left as they are."""
    if "-m" in args or "--multirun" in args:
        return args
    resume = resume_argument(args)
    if resume is None:
        return args
    at = next(i for i, a in enumerate(args) if override_key(a) == "resume" and "=" in a)
    run = Path(run_dir(resume, ""))
    saved: dict[str, str] = {}
    for record in [run / ".hydra", *sorted(run.glob(".hydra-resumed-*"))]:
        path = record / "overrides.yaml"
        if path.is_file():
            for override in yaml.safe_load(path.read_text()) or []:
                saved[override_key(str(override))] = (override, path)
    given = {override_key(a) for a in args if not a.startswith("-")}
    restored = []
    for key, (override, record) in saved.items():
        # init_from: a resumed run has its weights; hparams_search: a resume is one run
        if key not in given and key not in ("resume", "init_from", "hparams_search"):
            check_recorded_override(override, record)
            restored.append(override)
    return [*args[:at], *restored, *args[at:]]


def check_recorded_override(override: object, record: Path) -> None:
    """Refuse an override recorded in a run directory that could choose code: ``resume=``
    replays a run's recorded overrides, and a run directory may come from anyone. Such an
    override may not set Hydra's own settings, name a class outside ferlab's allow-list (as a
    ``_target_`` at any depth), use an interpolation, or reach outside a config group."""
    def refuse(why: str) -> ValueError:
        return ValueError(
            f"{record} records the override {override!r}, which {why}. resume= replays a run's "
            "recorded overrides, so a run directory could choose what runs; nothing was started. "
            "Resume only runs you trust; if you trust this one, give that override on the "
            "command line yourself (what you type wins over the record).")

    if not isinstance(override, str):
        raise refuse("is not an override string")
    try:
        parsed = OverridesParser.create().parse_overrides([override])[0]
    except HydraException as err:
        raise refuse(f"Hydra cannot parse ({err})") from None
    key, value = parsed.key_or_group, parsed.value() if parsed.value_type else None
    if key.split(".")[0].split("/")[0] == "hydra":
        raise refuse("sets Hydra's own settings")
    named = list(targets(value, key))
    if key.split(".")[-1] == "_target_":
        named.append((key, value))
    for where, target in named:
        if not is_allowed_target(target):
            raise refuse(f"names {target!r} at {where}, not one of the classes ferlab's own "
                         "configs name")
    if "${" in str(value):
        raise refuse("holds an interpolation")
    group = (Path(CONFIG_DIR) / key).is_dir()
    if group and isinstance(value, str) and (".." in value.split("/") or value.startswith("/")):
        raise refuse("reaches outside its config group")


def register_resolvers() -> None:
    """Register ferlab's OmegaConf resolvers (idempotent)."""
    for name, func in (("ferlab.run_dir", run_dir), ("ferlab.config_subdir", config_subdir),
                       ("ferlab.job_subdir", job_subdir), ("ferlab.run_name", run_name)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, func)
