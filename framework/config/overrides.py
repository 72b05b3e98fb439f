"""What the command line asks for, read with Hydra's own parsers, never by matching strings.

Some decisions must be made before Hydra composes anything (re-launching for `strict`, running a
resumed run in its own directory), and a resumed run must know which keys the user gave. Hydra's
grammar has many spellings for one key: `key=v`, `+key=v`, `++key=v`, `~key`, a group
`determinism=strict`, a sweep `determinism=choice(strict,seeded)` or `determinism=glob(st*)`,
quoted values. Hydra's argument parser and override parser read them all the way Hydra will.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import HydraException

from framework.config.folders import CONF_DIR


def parse(argv: list[str]) -> list[Override]:
    """The overrides among `argv` (flags such as `-m` or `--config-dir D` set aside), parsed.

    Anything Hydra would refuse gives an empty list here: Hydra then reports it in its own words.
    """
    try:
        return OverridesParser.create().parse_overrides(parse_args(argv).overrides)
    except (HydraException, ValueError):
        return []


def parse_args(argv: list[str]):
    """Hydra's own reading of the command line: its flags and its list of overrides (none, where
    it would refuse the command line: Hydra then says why)."""
    # hydra.main builds its command line with this parser; importing it keeps the two the same.
    from hydra._internal.utils import get_args_parser

    try:
        return get_args_parser().parse_known_args(argv)[0]
    except SystemExit:
        return get_args_parser().parse_known_args([])[0]


def unreadable(argv: list[str]) -> str | None:
    """Why an override cannot be read at all, in one line (None when all can, or Hydra says why in
    its own words): Hydra's parser lets some errors out bare, such as Python's refusal to convert
    an integer of more than 4300 digits, and those would show as a long traceback."""
    for text in parse_args(argv).overrides:
        try:
            OverridesParser.create().parse_overrides([text])
        except HydraException:
            continue
        except ValueError as e:
            shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
            return f"cannot read the override {shown}: {str(e).split('; use ')[0]}"
    return None


def is_multirun(argv: list[str]) -> bool:
    return bool(parse_args(argv).multirun)


def with_overrides(argv: list[str], *added: str) -> list[str]:
    """`argv` with `added` overrides, placed right after its last override: Hydra's argument
    parser takes the overrides as one run of words, and refuses a second run after a flag
    (`--cfg job seed=1` then another override)."""
    words = set(parse_args(argv).overrides)
    last = max((i for i, word in enumerate(argv) if word in words), default=len(argv) - 1)
    return [*argv[: last + 1], *added, *argv[last + 1 :]]


def values(override: Override, options: Iterable[str] = ()) -> list[str]:
    """Every value an override may take: one, or each of a sweep's (a glob over `options`)."""
    if override.is_delete():
        return []
    if not override.is_sweep_override():
        return [str(override.value())]
    glob = override.value()
    if isinstance(glob, Glob):  # enumerating a glob needs the group's options
        return glob.filter(sorted(options))
    if override.is_discrete_sweep():
        return list(override.sweep_string_iterator())
    return []  # an interval: a range of numbers, never a name


def asks_for_strict(argv: list[str]) -> bool:
    """Whether the command line asks for determinism=strict in any run (a sweep's included)."""
    levels = [p.stem for p in (CONF_DIR / "determinism").glob("*.yaml")]
    return any(
        o.key_or_group in ("determinism", "determinism.level") and "strict" in values(o, levels) for o in parse(argv)
    )


def sets_determinism(argv: list[str]) -> bool:
    """Whether the command line gives a determinism level (in any spelling)."""
    return any(o.key_or_group in ("determinism", "determinism.level") for o in parse(argv))


def value_of(argv: list[str], key: str) -> str | None:
    """The single value the command line gives `key` (however it is spelt), or None."""
    for o in parse(argv):
        if o.key_or_group == key and not o.is_sweep_override() and not o.is_delete():
            return str(o.value())
    return None


def quoted(value: str) -> str:
    """A value as an override may carry it whatever it holds (spaces, commas, `=`, quotes).

    Hydra's quoted strings escape only a quote, and the backslashes right before a quote or at
    the end; every other backslash is taken as it is.
    """
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def given_keys(task_overrides: list[str], groups: Mapping[str, object]) -> list[str]:
    """The config keys the user's overrides touch: `optimizer.lr` for `optimizer.lr=0.5`,
    `optimizer` for the group override `optimizer=adamw`, "" (everything) for an option placed
    at the top level with `@_global_`. `groups` are the config groups of the composed config
    (Hydra's runtime choices). Hydra's own settings (`hydra.*`, `hydra/...`) are not the
    experiment and are left out."""
    keys = []
    for o in OverridesParser.create().parse_overrides(task_overrides):
        if o.is_hydra_override():
            continue
        if o.key_or_group == "recipe":
            keys.append("")  # a recipe sets keys anywhere in the config (its package is _global_)
        elif o.key_or_group in groups:
            package = o.package if o.package is not None else o.key_or_group.replace("/", ".")
            keys.append("" if package == "_global_" else package)
        else:
            keys.append(o.key_or_group)
    return keys


def without(lines: list[str], key: str) -> list[str]:
    """Override lines (as in .hydra/overrides.yaml) except those that set `key`, however spelt."""
    return [o.input_line for o in OverridesParser.create().parse_overrides(lines) if o.key_or_group != key]
