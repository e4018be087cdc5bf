"""One source of option names and defaults: every command built from a config dataclass declares an option for
each field, with the field's default (through the field's parser where the command line takes text)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import typer

from cdeit.common.cli import app
from cdeit.common.options import ConfigOptions, field_defaults

REQUIRED = Path("required-option")  # stands in for the value of an option without a default


def config_commands(group: typer.Typer, prefix: str = "") -> Iterator[tuple[str, object, ConfigOptions]]:
    """(command path, click command, its ConfigOptions) for every command marked with ConfigOptions.command."""
    clicked = typer.main.get_command(group)
    for info in group.registered_commands:
        options = getattr(info.callback, "config_options", None)
        if options is not None:
            name = info.name or info.callback.__name__.replace("_", "-")
            command = clicked.commands[name] if hasattr(clicked, "commands") else clicked  # typer may vendor click
            yield f"{prefix}{name}", command, options
    for sub in group.registered_groups:
        yield from config_commands(sub.typer_instance, f"{prefix}{sub.name} ")


def check_defaults(command: click.Command, options: ConfigOptions) -> list[str]:
    """What is wrong between a command's parameters and its config: one line per field."""
    params = {p.name: p for p in command.params}
    problems = [f"field {f} has no option" for f in options.fields if f not in params]
    if problems:
        return problems
    defaults = field_defaults(options.config)
    built = options.values({name: REQUIRED if p.required else p.default for name, p in params.items()})
    for name in options.fields:
        option = "/".join(params[name].opts)
        if name not in defaults:
            if not params[name].required:
                problems.append(f"{option} has a default but field {name} has none")
        elif built[name] != defaults[name]:
            problems.append(f"{option} defaults to {built[name]!r}, field {name} to {defaults[name]!r}")
    return problems


COMMANDS = list(config_commands(app))


def test_every_config_has_its_command() -> None:
    assert {options.config.__name__ for _, _, options in COMMANDS} == {
        "TrainConfig",
        "PrecomputeConfig",
        "PrepareConfig",
    }
    assert {path for path, _, _ in COMMANDS} == {"train", "precompute-teacher", "data prepare"}


@pytest.mark.parametrize(("path", "command", "options"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_option_defaults_are_the_config_defaults(path: str, command: click.Command, options: ConfigOptions) -> None:
    assert check_defaults(command, options) == [], f"cdeit {path}"


# ------------------------------------------------------------------------------------------ the check itself
@dataclass
class Toy:
    name: str
    size: int = 3
    tags: tuple[str, ...] = ("a", "b")
    extra: dict = dataclasses.field(default_factory=dict)


def toy_command(size: int, tags: str = "a,b", with_extra: bool = True) -> click.Command:
    """A click command for Toy whose `size` default (and whether it declares `extra`) the test chooses."""
    params = [click.Option(["--name"], required=True), click.Option(["--size"], default=size),
              click.Option(["--tags"], default=tags)]  # fmt: skip
    if with_extra:
        params.append(click.Option(["--extra"], default="{}"))
    return click.Command("toy", params=params)


TOY = ConfigOptions(Toy, tags=lambda t: tuple(t.split(",")), extra=lambda t: {})


def test_the_check_finds_a_drifted_default_and_a_missing_option() -> None:
    assert check_defaults(toy_command(3), TOY) == []
    assert check_defaults(toy_command(4), TOY) == ["--size defaults to 4, field size to 3"]
    assert check_defaults(toy_command(3, tags="a"), TOY) == ["--tags defaults to ('a',), field tags to ('a', 'b')"]
    assert check_defaults(toy_command(3, with_extra=False), TOY) == ["field extra has no option"]


def test_build_overrides_a_base_with_the_options_typed_only() -> None:
    command = toy_command(3)
    ctx = command.make_context("toy", ["--name", "x", "--size", "7"])
    assert TOY.build(ctx) == Toy("x", 7, ("a", "b"), {})
    assert TOY.build(ctx, base={"name": "old", "size": 1, "tags": ("z",), "extra": {"k": 1}}) == Toy(
        "x", 7, ("z",), {"k": 1}
    )
    with pytest.raises(TypeError, match="has no fields nope"):
        ConfigOptions(Toy, nope=str)
