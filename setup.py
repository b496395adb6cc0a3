"""The build's one step beyond pyproject.toml: the Hydra configs of conf/ go into the wheel as
ferlab/conf, so that a wheel install finds them where an editable clone reads conf/ itself
(ferlab.config.CONFIG_DIR). A package-dir mapping would do the same for the wheel but turns an
editable install into an import hook that Hydra's plugin discovery (pkgutil) cannot list."""

from pathlib import Path
from shutil import copy2

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIGS = Path(__file__).resolve().parent / "conf"


class BuildWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "ferlab" / "conf"
        for config in CONFIGS.rglob("*.yaml"):
            destination = target / config.relative_to(CONFIGS)
            destination.parent.mkdir(parents=True, exist_ok=True)
            copy2(config, destination)


setup(cmdclass={"build_py": BuildWithConfigs})
