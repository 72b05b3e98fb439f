"""The config: schemas, checks, override parsing, target arguments, recipes."""
