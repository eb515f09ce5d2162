"""Command-line interface: every command parses its options and makes one call into the Python API."""

from . import analysis_commands, data_commands, experiment_commands, run_commands  # noqa: F401  (register the commands)
from .common import app

__all__ = ["app"]
