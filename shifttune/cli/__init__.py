"""The command line: `shifttune generate | profile | recommend`, one thin module per command over a
library function that returns data and a renderer that prints it (`common.py`: shared errors/options)."""

from shifttune.cli.app import app

__all__ = ["app"]
