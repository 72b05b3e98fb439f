"""`python -m framework.compare` keeps working: the run comparison lives in framework/cli/compare.py."""

import sys

from framework.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
