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

import argparse
import ast
import keyword
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser

from framework.config import ConfigError, config_from_text
from framework.file_kind import not_a_regular_file

SHIPPED = (Path(__file__).parent / "recipes").resolve()
SHIPPED_PACKAGE = "framework.recipes"
FOLDERS_ENV = "FRAMEWORK_RECIPES"
DEFAULT_TEMPLATE = "template"  # what `new` copies without --from: its own model and dataset
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HEADER = "# @package _global_"
# The packages the framework imports wherever a recipe runs: with those the copied module imports,
# names a new recipe may not take (see unusable_name).
FRAMEWORK_IMPORTS = ("framework", "torch", "numpy", "hydra", "omegaconf")


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


def user_folders() -> list[Path]:
    listed = os.environ.get(FOLDERS_ENV)
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
    for recipe in (recipes if recipes is not None else find_all()).values():
        try:
            node = read(recipe)
        except ConfigError as e:
            problems[recipe.name] = str(e)
            continue
        store.store(group="recipe", name=recipe.name, node=node, package="_global_")
        if not recipe.shipped:
            parent = str(recipe.file.parent.resolve().parent)
            if parent not in sys.path:
                sys.path.append(parent)
    return problems


# ---- python -m framework.recipe ----------------------------------------------------------
def list_recipes() -> int:
    recipes = find_all()
    width = max(map(len, recipes), default=0)
    for recipe in recipes.values():
        where = "" if recipe.shipped else f"  [{recipe.file.parent}]"
        print(f"{recipe.name:<{width}}  {recipe.description()}{where}")
    print("\nRun one: python -m framework recipe=NAME [overrides]; start your own: python -m framework.recipe new NAME")
    return 0


def new_recipe(name: str, source_name: str, folder: Path | None) -> int:
    recipes = find_all()
    if source_name not in recipes:
        return refuse(f"--from {source_name}: no such recipe (there are: {', '.join(recipes)})")
    source = recipes[source_name]
    folder, chosen_by = folder_to_write(folder)
    if os.path.lexists(folder) and not folder.is_dir():
        return refuse(f"{folder} ({chosen_by}) is not a folder: the new recipe cannot be written into it")
    target_yaml, target_py = folder / f"{name}.yaml", folder / f"{name}.py"
    problem = unusable_name(name, folder, source)
    if problem:
        return refuse(problem)
    for existing in (target_yaml, target_py):
        if os.path.lexists(existing):
            return refuse(
                f"{existing} exists: the new recipe would overwrite it. Pick another name, or delete it first"
            )
    if name in recipes:
        return refuse(f"a recipe named {name} exists already ({recipes[name].file}): pick another name")
    package = package_of(folder)
    if not all(NAME.fullmatch(part) for part in package.split(".")):
        return refuse(f"{folder}: its name must be a Python identifier, for {name}.py to import as FOLDER.{name}")
    if source.problem():
        return refuse(f"--from {source_name}: {source.problem()}")

    text = source.file.read_text()
    text = text.replace(f"{source.package}.{source_name}.", f"{package}.{name}.")  # _target_ paths
    text = text.replace(f"recipe={source_name}", f"recipe={name}")  # the command in its opening comment
    text = text.replace(f"{source_name}.py", f"{name}.py")  # its module, where the comments name it
    files = {target_yaml: text}
    if source.module is not None:
        files[target_py] = source.module.read_text()
    try:
        write_new_files(folder, files)
    except OSError as e:
        return refuse(f"cannot write the new recipe into {folder}: {e.strerror or e}")
    print(f"wrote {', '.join(map(str, files))} (from {source_name})")
    if folder.resolve() not in {f.resolve() for f in user_folders()}:
        print(f"{folder} is not where recipes are looked for: set {FOLDERS_ENV}={folder}")
    print(f"edit it, then: python -m framework recipe={name}")
    return 0


def folder_to_write(given: Path | None) -> tuple[Path, str]:
    """Where `new` writes, and what chose it (for a message about it)."""
    if given is not None:
        return given, "--dir"
    if os.environ.get(FOLDERS_ENV):
        return user_folders()[0], f"the first folder of ${FOLDERS_ENV}"
    return user_folders()[0], "the recipes folder of the directory you run from"


def unusable_name(name: str, folder: Path, source: Recipe) -> str | None:
    """Why `name` cannot be a recipe's: `recipe=NAME` must name it and FOLDER.NAME import its module.
    Refused: special module names (`__init__.py` would run at every recipe import), keywords,
    what Hydra reads as null, a bool or a number, and names an import in the folder's package
    binds over the module (Hydra finds FOLDER.NAME's classes as attributes of FOLDER): those its
    __init__.py binds, and the packages the framework and the copied module import, which an
    __init__.py is the likeliest to import too."""
    if not NAME.fullmatch(name):
        return f"{name!r} is not a valid recipe name: letters, digits and _, not starting with a digit"
    if name.startswith("__") and name.endswith("__"):
        return f"{name!r} is one of Python's special names (an __init__.py runs at every import): pick another name"
    if keyword.iskeyword(name):
        return f"{name!r} is a Python keyword: `import {package_of(folder)}.{name}` is not Python. Pick another name"
    read_as = OverridesParser.create().parse_override(f"recipe={name}").value()
    if read_as != name:
        return f"recipe={name} reads as {read_as!r}, not as the recipe's name: pick another name"
    init = folder / "__init__.py"
    if name in names_bound_by(init):
        return f"{init} binds {name!r}, which would hide the module {package_of(folder)}.{name}: pick another name"
    imported = {*FRAMEWORK_IMPORTS, *modules_imported_by(source.module)}
    if name in imported:
        return (
            f"{name!r} is a module the framework or the copied code imports ({', '.join(sorted(imported))}): an "
            f"__init__.py in {folder} that imports it would hide the module {package_of(folder)}.{name}. "
            "Pick another name"
        )
    return None


def parsed_module(path: Path | None) -> ast.Module | None:
    """A Python file's syntax tree, read without running it; None where there is no such file
    or it does not parse (Python says so when it is imported)."""
    if path is None or not_a_regular_file(path):
        return None
    try:
        return ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None


def modules_imported_by(path: Path | None) -> set[str]:
    """The top-level packages a module imports (`from torch import nn`: torch)."""
    tree = parsed_module(path)
    found = set()
    for node in ast.walk(tree) if tree else ():
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - {"__future__"}


def names_bound_by(path: Path) -> set[str]:
    """The names a module binds at its top level: imports, functions, classes, assignments."""
    tree = parsed_module(path)
    found = set()
    for node in tree.body if tree else ():
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
    return found


def write_new_files(folder: Path, files: dict[Path, str]) -> None:
    """Each file, created (never over another); on a failure, none of them is left."""
    written = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            with open(path, "x") as f:
                written.append(path)
                f.write(text)
    except OSError:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def refuse(message: str) -> int:
    print(f"Error: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framework.recipe",
        description="Experiment templates: list them, or start a new one from one of them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="each recipe with its line of description")
    new = commands.add_parser("new", help="write a new recipe (and its Python module) to edit")
    new.add_argument("name", help="the new recipe's name (a Python identifier)")
    new.add_argument("--from", dest="source", default=DEFAULT_TEMPLATE, help=f"the recipe to copy ({DEFAULT_TEMPLATE})")
    new.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"the folder to write into (default: the first of ${FOLDERS_ENV}, else ./recipes)",
    )
    args = parser.parse_args(argv)
    if args.command == "list":
        return list_recipes()
    return new_recipe(args.name, args.source, args.dir)


if __name__ == "__main__":
    sys.exit(main())
