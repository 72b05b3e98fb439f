"""`python -m framework [overrides]`: the command lives in framework/cli/train.py."""

from framework.cli.train import command

if __name__ == "__main__":
    command()
