"""Command options from config dataclasses: the dataclass is the only home of an option's name and default.

A stage's command declares one parameter per config field, named like the field, with the field's default
(`defaults(Config).name`, or its text form where the command line takes text: a comma list, JSON). A
`ConfigOptions` turns the parsed parameters into the config in one way for every command: each field from
the parameter of the same name, passed through that field's parser where the command line's form differs.
tests/test_options.py walks every command and fails when an option's default differs from its field's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import click

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def field_defaults(config: type) -> dict[str, Any]:
    """Each field's default (a default_factory called once); fields without a default are left out."""
    out = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def defaults(config: type) -> SimpleNamespace:
    """The fields' defaults as attributes, for a command's signature: `epochs: int = D.epochs`."""
    return SimpleNamespace(**field_defaults(config))


class ConfigOptions(Generic[T]):
    """How one command's parameters become its config dataclass.

    `parsers` maps a field to the function that turns its command-line value (text) into the field's value
    (and refuses a bad one with a CdeitError); every other field takes its parameter as it is. Parameters
    that are not fields (`--resume`, `--config`) are the command's own business.
    """

    def __init__(self, config: type[T], **parsers: Callable[[Any], Any]) -> None:
        names = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(parsers) - names)
        if unknown:
            raise TypeError(f"{config.__name__} has no fields {', '.join(unknown)}")
        self.config = config
        self.parsers = parsers
        self.fields = tuple(f.name for f in dataclasses.fields(config))

    def command(self, fn: F) -> F:
        """Mark `fn` as the command whose parameters build this config, so tests/test_options.py checks it."""
        fn.config_options = self  # type: ignore[attr-defined]
        return fn

    def values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """{field: value} from a command's parameters, each through its parser; a missing parameter raises."""
        missing = [name for name in self.fields if name not in params]
        if missing:
            raise TypeError(f"the command declares no option for {self.config.__name__} fields {', '.join(missing)}")
        return {name: self.parsers.get(name, _same)(params[name]) for name in self.fields}

    def typed(self, ctx: click.Context) -> dict[str, Any]:
        """{field: value} of the options typed on the command line only (not taken from their defaults)."""
        values = self.values(ctx.params)  # by name below: typer may bring its own copy of click's ParameterSource
        return {k: v for k, v in values.items() if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}

    def build(self, ctx: click.Context, base: Mapping[str, Any] | None = None) -> T:
        """The config from the command's parameters; with `base`, only options typed on the command line override it."""
        if base is not None:
            return self.config(**(dict(base) | self.typed(ctx)))
        return self.config(**self.values(ctx.params))


def _same(value: Any) -> Any:
    return value


def comma_list(text: str) -> tuple[str, ...]:
    """`a, b,c` -> ('a', 'b', 'c'); empty items are dropped."""
    return tuple(t.strip() for t in text.split(",") if t.strip())
