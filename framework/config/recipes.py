"""Recipes: experiment templates. `python -m framework.recipe list` and `... new NAME`.

A recipe is a Hydra experiment file, NAME.yaml: `# @package _global_`, a comment line that says
what it is for, one with the command that runs it, a defaults list of `override /group: option`,
then only the values that differ from the defaults. `python -m framework recipe=NAME` runs it:
its values beat the defaults (it comes after `_self_` in conf/config.yaml) and the command line
beats it. A recipe may bring a Python module beside it, NAME.py, with its own model or dataset,
named by `_target_`.

Where recipes are found (the first of a name wins):
  1. the user's own folders: those in $FRAMEWORK_RECIPES (separated by ':'), else ./recipes;
  2. the ones shipped with the framework: the top-level recipes/ folder (framework/recipes links
     to it, and the wheel holds it as the package framework.recipes).
A module beside a recipe imports as FOLDER.NAME (`recipes.my_idea.Net` for ./recipes/my_idea.py,
`framework.recipes.template.Net` for a shipped one): the parent of each user folder is put on
sys.path when the recipes are registered, so a resumed run finds its classes too.

Hydra's config groups are folders named for the group under a search path; a recipe folder
holds the recipes themselves. So each recipe is read here and stored in Hydra's ConfigStore as
the option NAME of the group `recipe`, at the package its header names (`_global_`).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore

from framework.config.errors import ConfigError
from framework.config.resolved import config_from_text
from framework.file_kind import not_a_regular_file

SHIPPED = (Path(__file__).parent.parent / "recipes").resolve()


SHIPPED_PACKAGE = "framework.recipes"


FOLDERS_ENV = "FRAMEWORK_RECIPES"


NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


HEADER = "# @package _global_"


@dataclass
class Recipe:
    name: str
    file: Path
    package: str  # the module beside it imports as PACKAGE.NAME

    @property
    def module(self) -> Path | None:
        path = self.file.with_suffix(".py")
        return path if path.is_file() else None

    @property
    def shipped(self) -> bool:
        return self.file.parent.resolve() == SHIPPED

    def problem(self) -> str | None:
        """Why its file cannot be read as a recipe, found without opening it (a named pipe would block), or None."""
        return not_a_regular_file(self.file)

    def comment_lines(self) -> list[str]:
        """The comment block it opens with, without the `#` and the package header."""
        lines = []
        for line in self.file.read_text().splitlines():
            if not line.startswith("#"):
                break
            if line.strip() != HEADER:
                lines.append(line.lstrip("#").strip())
        return lines

    def description(self) -> str:
        problem = self.problem()
        if problem:
            return f"(cannot be used: {problem})"
        try:
            lines = self.comment_lines()
        except (OSError, UnicodeDecodeError) as e:
            return f"(cannot be used: cannot read {self.file}: {e})"
        return lines[0] if lines else "(no description: its first comment line says what it is for)"


def user_folders(environ: Mapping[str, str] = os.environ) -> list[Path]:
    listed = environ.get(FOLDERS_ENV)
    if listed:
        return [Path(p).expanduser() for p in listed.split(os.pathsep) if p]
    return [Path("recipes")]


def package_of(folder: Path) -> str:
    """What the modules in a recipes folder import under: the shipped one is framework.recipes,
    a user's folder is named for itself (its parent goes on sys.path)."""
    return SHIPPED_PACKAGE if folder.resolve() == SHIPPED else folder.resolve().name


def find_all() -> dict[str, Recipe]:
    """Every recipe by name: the user's folders first, then the shipped ones."""
    found: dict[str, Recipe] = {}
    for folder in [*user_folders(), SHIPPED]:
        for file in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found.setdefault(file.stem, Recipe(file.stem, file, package_of(folder)))
    return found


def read(recipe: Recipe):
    """The recipe's config, or a one-line error naming its file."""
    problem = recipe.problem()
    if problem:
        raise ConfigError(f"recipe={recipe.name}: {problem}")
    try:
        text = recipe.file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe={recipe.name}: cannot read {recipe.file}: {e}") from e
    if HEADER not in text.split("\n\n", 1)[0].splitlines():
        raise ConfigError(
            f"recipe={recipe.name}: {recipe.file} must open with '{HEADER}' (a recipe sets keys of the whole config)"
        )
    return config_from_text(text, str(recipe.file))


def register(recipes: dict[str, Recipe] | None = None) -> dict[str, str]:
    """Store every recipe (those of find_all() unless given) in Hydra's ConfigStore (group
    `recipe`); return the ones that could not be read, name -> why (said when one of them is
    asked for, not on every run)."""
    problems = {}
    store = ConfigStore.instance()
    recipes = recipes if recipes is not None else find_all()
    for recipe in recipes.values():
        try:
            node = read(recipe)
        except ConfigError as e:
            problems[recipe.name] = str(e)
            continue
        store.store(group="recipe", name=recipe.name, node=node, package="_global_")
    make_importable({name: r for name, r in recipes.items() if name not in problems})
    return problems


def make_importable(recipes: Mapping[str, Recipe]) -> None:
    """Put the parent of each user folder of `recipes` on sys.path, so that the modules beside them
    import as FOLDER.NAME (the shipped ones import as framework.recipes.NAME)."""
    for recipe in recipes.values():
        if not recipe.shipped:
            parent = str(recipe.file.parent.resolve().parent)
            if parent not in sys.path:
                sys.path.append(parent)
