"""Recipes: ready configs for real teacher/student pairs, shipped with the package as YAML files.

Each file opens with comment lines: the first says what the pair is, `# hardware:` what it was sized for, and
`# run:` the command. A recipe is a config like any other (`--set` overrides it):

    ctkd-tune recipes                                   # name, hardware and description of each
    ctkd-tune config --recipe smollm2-135m-offline      # the full resolved config
    ctkd-tune distill --recipe smollm2-135m-offline --output runs/smol
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctkd_tune.config import ConfigError

DIRECTORY = Path(__file__).resolve().parent


@dataclass
class RecipeInfo:
    name: str
    description: str  # the file's first comment line
    hardware: str  # the `# hardware:` line
    path: Path


def recipe_names() -> list[str]:
    return sorted(p.stem for p in DIRECTORY.glob("*.yaml"))


def recipe_file(name: str) -> Path:
    """The YAML file of recipe `name`; an unknown name is a ConfigError listing the known ones."""
    path = DIRECTORY / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {name!r}; choose from {', '.join(recipe_names())} (ctkd-tune recipes)")
    return path


def recipe_info(name: str) -> RecipeInfo:
    path = recipe_file(name)
    comments = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    hardware = next((c.partition(":")[2].strip() for c in comments if c.startswith("hardware:")), "")
    return RecipeInfo(name, comments[0] if comments else "", hardware, path)


def list_recipes() -> list[RecipeInfo]:
    return [recipe_info(name) for name in recipe_names()]
