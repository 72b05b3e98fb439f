"""`python -m framework.recipe` keeps working: the recipe tool lives in framework/cli/recipe.py."""

from framework.cli import exit_with
from framework.cli.recipe import main

if __name__ == "__main__":
    exit_with(main)
