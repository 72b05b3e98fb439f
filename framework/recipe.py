"""`python -m framework.recipe` keeps working: the recipe tool lives in framework/cli/recipe.py."""

import sys

from framework.cli.recipe import main

if __name__ == "__main__":
    sys.exit(main())
