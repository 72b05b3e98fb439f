"""`python -m framework.recipe list` and `... new NAME [--from RECIPE] [--dir FOLDER]`: the recipe
tool. What a recipe is and where recipes are found: framework/config/recipes.py."""

from __future__ import annotations

import argparse
import ast
import keyword
import os
import sys
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from framework.cli import exit_with
from framework.config.recipes import FOLDERS_ENV, NAME, Recipe, find_all, package_of, user_folders
from framework.file_kind import not_a_regular_file

DEFAULT_TEMPLATE = "template"  # what `new` copies without --from: its own model and dataset


# The packages the framework imports wherever a recipe runs: with those the copied module imports,
# names a new recipe may not take (see unusable_name).
FRAMEWORK_IMPORTS = ("framework", "torch", "numpy", "hydra", "omegaconf")


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
    exit_with(main)
