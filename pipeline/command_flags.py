"""How a command other than `run` declares its flags: once, in a table of `CommandFlag`s.

The trainers (`pipeline/train/`, as `TrainFlag`) and the tools (`pipeline/tools/`) each keep a
`FLAGS` table; the command's parser is built from it (`add_flags`), and a trainer's config
dataclass reads its defaults from it (`flag_default`) and is built from the parsed flags through it
(`config_values`). The job's own flags (`run`) are Beam option views with `pipeline.options.Flag`,
which does not fit here: these flags have no underscore spellings, keep older aliases, take plain
`store_true` switches, a positional `RUN` and groups of which one flag must be given.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Optional, Sequence

__all__ = ["CommandFlag", "add_flags", "flag_default", "config_values"]


@dataclasses.dataclass(frozen=True)
class CommandFlag:
    """One flag, declared once, in its command's `FLAGS` table: its name (and the older spellings it
    still takes, `aliases`), help (argparse fills in `%(default)s`), default and argparse details,
    and the config field it sets. The field is its `dest` unless `field` says otherwise (`""`:
    none); `convert` turns the parsed value into the field's (`--no-flip` -> `flip`). A config
    dataclass reads its defaults from the table (`flag_default`), so a default is written once.
    `group`: the title of its `--help` group (none: the general one). `exclusive`: the name of a
    group of flags of which exactly one must be given (argparse's required mutually exclusive group).
    A name without a leading dash is a positional argument (its dest is its name)."""

    name: str
    help: str
    default: Any = None
    aliases: tuple[str, ...] = ()
    dest: Optional[str] = None
    type: Optional[Callable] = None
    choices: Optional[Sequence[str]] = None
    metavar: Optional[str] = None
    required: bool = False
    action: Optional[str] = None  # "append" (repeatable: a list) or "store_true"
    group: Optional[str] = None
    field: Optional[str] = None
    convert: Optional[Callable[[Any], Any]] = None
    nargs: Optional[str] = None
    exclusive: Optional[str] = None

    @property
    def key(self) -> str:
        """Its argparse dest: `dest`, or the name with underscores (`--batch-size` -> batch_size)."""
        return self.dest or self.name.lstrip("-").replace("-", "_")

    @property
    def config_field(self) -> str:
        return self.key if self.field is None else self.field

    def value(self, parsed: Any) -> Any:
        """The config field's value for the flag's parsed value."""
        return self.convert(parsed) if self.convert else parsed

    def add_to(self, parser) -> None:
        kwargs: dict = {"default": self.default, "help": self.help}
        if self.name.startswith("-"):  # argparse takes a positional's dest from its name only
            kwargs["dest"] = self.key
        details = (("type", self.type), ("choices", self.choices), ("metavar", self.metavar), ("action", self.action))
        kwargs.update({k: v for k, v in details + (("nargs", self.nargs),) if v is not None})
        if self.required:
            kwargs["required"] = True
        parser.add_argument(self.name, *self.aliases, **kwargs)


def add_flags(parser: argparse.ArgumentParser, flags: Sequence[CommandFlag]) -> None:
    """Add a command's flags to its parser, in table order, each in its `--help` group or its group of
    which one must be given."""
    groups: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    for flag in flags:
        if flag.group and flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        if flag.exclusive and flag.exclusive not in exclusive:
            exclusive[flag.exclusive] = parser.add_mutually_exclusive_group(required=True)
        flag.add_to(exclusive[flag.exclusive] if flag.exclusive else groups[flag.group] if flag.group else parser)


def flag_default(flags: Sequence[CommandFlag], field: str) -> Any:
    """The default of the config field `field`: that of the flag setting it, converted."""
    [flag] = [flag for flag in flags if flag.config_field == field]
    return flag.value(flag.default)


def config_values(flags: Sequence[CommandFlag], args: argparse.Namespace) -> dict:
    """The config fields the parsed flags set, by field name."""
    return {flag.config_field: flag.value(getattr(args, flag.key)) for flag in flags if flag.config_field}
