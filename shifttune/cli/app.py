"""The `shifttune` Typer app: one command per module of this package. Commands appear once built."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from shifttune.cli.bench import bench
from shifttune.cli.generate import generate
from shifttune.cli.profile import profile
from shifttune.cli.recommend import recommend
from shifttune.cli.serve import serve
from shifttune.cli.top import top


class _NoFlagType:
    """`--help` is a flag: show no `<bool>` value placeholder next to it (as for every flag here)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Command(_NoFlagType, TyperCommand):
    pass


class Group(_NoFlagType, TyperGroup):
    pass


app = typer.Typer(
    cls=Group,
    help="shifttune: shift-parallel LLM inference (TP <-> SP x TP per step over one KV cache).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"shifttune {version('shifttune')}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", metavar="", help="Log engine details.")] = False,
    show_version: Annotated[
        bool,
        typer.Option("--version", metavar="", help="Print the version and exit.", callback=_version, is_eager=True),
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


for command in (generate, profile, recommend, serve, bench, top):
    app.command(cls=Command)(command)

if __name__ == "__main__":
    app()
