"""Recipe files and names the recipe tool and the framework refuse, through the real command line:
a named pipe, a folder or a dangling link where a recipe should be, a recipes folder that is a
file, names that cannot work. Each gets one line naming the file or the name, a non-zero exit and
no traceback, and nothing is written or lost."""

from __future__ import annotations

import os

from helpers import assert_one_line_error, run_together


def test_a_pipe_a_folder_and_a_dangling_link_among_the_recipes_are_named_not_opened(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    os.mkfifo(recipes / "piped.yaml")
    (recipes / "folder.yaml").mkdir()
    (recipes / "dangling.yaml").symlink_to(tmp_path / "nowhere.yaml")
    listed, plain_start, chosen = run_together(
        ("framework.recipe", "list"),
        ("framework", "--version"),  # every start registers the recipes
        ("framework", "recipe=piped"),
        cwd=tmp_path,
    )
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert "recipes/piped.yaml is a named pipe (FIFO), not a regular file" in rows["piped"]
    assert "recipes/folder.yaml is a directory, not a regular file" in rows["folder"]
    assert f"recipes/dangling.yaml is a symbolic link to {tmp_path}/nowhere.yaml, which does not" in rows["dangling"]
    assert {"digits_cnn", "template"} <= rows.keys()  # the usable ones are still listed
    assert plain_start.returncode == 0 and plain_start.stdout.startswith("framework "), plain_start.stderr
    assert_one_line_error(chosen, 1, "recipe=piped: recipes/piped.yaml is a named pipe (FIFO)")


def test_a_new_recipe_into_a_recipes_folder_that_is_a_file_is_refused(tmp_path):
    mine = tmp_path / "notes"
    mine.write_text("mine\n")
    (tmp_path / "recipes").write_text("mine too\n")
    by_env, by_default, by_dir, below_a_file = run_together(
        ("framework.recipe", "new", "idea"),
        ("framework.recipe", "new", "idea", "--dir", "recipes"),
        ("framework.recipe", "new", "idea", "--dir", mine),
        ("framework.recipe", "new", "idea", "--dir", mine / "sub"),
        cwd=tmp_path,
        env={"FRAMEWORK_RECIPES": str(mine)},
    )
    assert_one_line_error(by_env, 1, f"{mine} (the first folder of $FRAMEWORK_RECIPES) is not a folder")
    assert_one_line_error(by_default, 1, "recipes (--dir) is not a folder")
    assert_one_line_error(by_dir, 1, f"{mine} (--dir) is not a folder")
    assert_one_line_error(below_a_file, 1, f"cannot write the new recipe into {mine / 'sub'}: Not a directory")
    default = run_together(("framework.recipe", "new", "idea"), cwd=tmp_path)[0]  # ./recipes, the default folder
    assert_one_line_error(default, 1, "recipes (the recipes folder of the directory you run from) is not a folder")
    assert mine.read_text() == "mine\n" and (tmp_path / "recipes").read_text() == "mine too\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "recipes"]


# Each name, and what the refusal says about it.
UNUSABLE_NAMES = {
    "__init__": "one of Python's special names",
    "__main__": "one of Python's special names",
    "class": "is a Python keyword",
    "null": "recipe=null reads as None",
    "inf": "recipe=inf reads as inf",
    "NaN": "recipe=NaN reads as nan",
    "torch": "'torch' is a module the framework or the copied code imports",
    "framework": "'framework' is a module the framework or the copied code imports",
    "math": "'math' is a module the framework or the copied code imports",  # the template imports it
    "helpers": "recipes/__init__.py binds 'helpers', which would hide the module recipes.helpers",
}


def test_a_new_recipe_with_a_name_that_cannot_work_is_refused_and_nothing_written(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "__init__.py").write_text("from . import helpers\n")  # a package of the user's own
    refused = run_together(*(("framework.recipe", "new", name) for name in UNUSABLE_NAMES), cwd=tmp_path)
    for proc, says in zip(refused, UNUSABLE_NAMES.values()):
        assert_one_line_error(proc, 1, says)
    assert [p.name for p in recipes.iterdir()] == ["__init__.py"]
    assert (recipes / "__init__.py").read_text() == "from . import helpers\n"
    made = run_together(("framework.recipe", "new", "torch_idea"), cwd=tmp_path)[0]  # a name merely like one is fine
    assert made.returncode == 0 and (recipes / "torch_idea.py").is_file(), made.stderr
