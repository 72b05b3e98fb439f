"""`python -m framework.ckpt` keeps working: the checkpoint tool lives in framework/cli/ckpt.py."""

import sys

from framework.cli.ckpt import main

if __name__ == "__main__":
    sys.exit(main())
