"""`python -m shifttune` runs the `shifttune` command, as `python -m shifttune.cli` does."""

from shifttune.cli.app import app

app(prog_name="shifttune")
