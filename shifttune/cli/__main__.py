"""`python -m shifttune.cli` runs the same app as the `shifttune` command."""

from shifttune.cli.app import app

app()
