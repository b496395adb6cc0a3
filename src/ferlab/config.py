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


def _config_dir() -> Path:
    """The Hydra configs: ``conf/`` at the top of a checkout (an editable install), which a
    wheel installs as ``ferlab/conf`` (pyproject's package-dir mapping)."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if installed.is_dir() else package.parents[1] / "conf"


CONFIG_DIR = str(_config_dir())


def run_dir(resume: str | None, default: str) -> str:
    """The output directory of a run: the resumed run's own directory, else ``default``."""
    if resume is None:
        return default
    path = Path(resume).expanduser()
    if path.suffix != ".ckpt":
        return str(path)
    # a run's checkpoint lives in <run dir>/checkpoints/; any other .ckpt (a downloaded
    # model.ckpt) has no run to continue, and its grandparent folder is not one
    if path.parent.name != "checkpoints":
        raise ValueError(
            f"resume={resume} is a checkpoint outside a run's checkpoints/ folder, so there is no "
            "run to continue. Pass a run directory (or <run>/checkpoints/<file>.ckpt), or start "
            f"a new run from its weights with init_from={resume}.")
    return str(path.parent.parent)


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
            for override in read_recorded_overrides(path):
                saved[override_key(override)] = (override, path)
    given = {override_key(a) for a in args if not a.startswith("-")}
    restored = []
    for key, (override, record) in saved.items():
        # init_from: a resumed run has its weights; hparams_search: a resume is one run
        if key not in given and key not in ("resume", "init_from", "hparams_search"):
            check_recorded_override(override, record)
            restored.append(override)
    return [*args[:at], *restored, *args[at:]]


def read_recorded_overrides(path: Path) -> list[str]:
    """A run's ``overrides.yaml``: a YAML list of override strings (plain YAML: no tags)."""
    try:
        overrides = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        raise ValueError(f"{path}{f' line {where.line + 1}' if where else ''} is not a plain "
                         f"YAML list of overrides ({type(err).__name__}: "
                         f"{' '.join(str(getattr(err, 'problem', None) or err).split())[:120]}); "
                         "resume= replays a "
                         "run's recorded overrides, so nothing was started. Give the run's "
                         "overrides on the command line instead.") from None
    if overrides is None:
        return []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ValueError(f"{path} is not a YAML list of override strings (it holds "
                         f"{overrides!r:.80}); resume= replays a run's recorded overrides, so "
                         "nothing was started.")
    return overrides


def _special(key: str) -> bool:
    """Hydra's instantiation keys (``_target_``, ``_args_``, ``_partial_`` ...)."""
    return len(key) > 2 and key.startswith("_") and key.endswith("_")


def check_recorded_override(override: object, record: Path) -> None:
    """Refuse an override recorded in a run directory that could choose code: ``resume=``
    replays a run's recorded overrides, and a run directory may come from anyone. Such an
    override sets a value or picks a config file of ferlab's groups, nothing more: it may not
    set Hydra's own settings or an instantiation key (``_target_``, ``_args_``, ``_partial_``
    ... at any depth), hold an interpolation (``${``) anywhere, sweep, or pick a config file
    outside its group (every element of a list is checked)."""
    def refuse(why: str) -> ValueError:
        return ValueError(
            f"{record} records the override {override!r:.200}, which {why}. resume= replays a "
            "run's recorded overrides, so a run directory could choose what runs; nothing was "
            "started. Resume only runs you trust; if you trust this one, give that override on "
            "the command line yourself (what you type wins over the record).")

    if not isinstance(override, str):
        raise refuse("is not an override string")
    if "${" in override:
        raise refuse("holds an interpolation")
    try:
        parsed = OverridesParser.create().parse_overrides([override])[0]
    except HydraException as err:
        raise refuse(f"Hydra cannot parse ({str(err)[:200]})") from None
    if parsed.is_sweep_override():
        raise refuse("is a sweep")
    key = parsed.key_or_group
    parts = re.split(r"[./@]", key)
    if parts[0] == "hydra":
        raise refuse("sets Hydra's own settings")
    if any(_special(part) for part in parts):
        raise refuse("sets an instantiation key")
    group = "." not in key  # a config group's choice: its values name files
    value = parsed.value() if parsed.value_type else None

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if _special(str(k)):
                    raise refuse(f"sets the instantiation key {k!r}")
                walk(k)
                walk(v)
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)
        elif isinstance(node, str):  # (an interpolation was refused in the text above)
            if group and (node.startswith(("/", "~", "\\")) or ".." in re.split(r"[/\\]",
                                                                               node)):
                raise refuse(f"reaches outside its config group ({node!r:.80})")

    walk(value)


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested config as ``{"a.b.c": value}`` (lists stay values)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def register_resolvers() -> None:
    """Register ferlab's OmegaConf resolvers (idempotent)."""
    for name, func in (("ferlab.run_dir", run_dir), ("ferlab.config_subdir", config_subdir),
                       ("ferlab.job_subdir", job_subdir), ("ferlab.run_name", run_name)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, func)
