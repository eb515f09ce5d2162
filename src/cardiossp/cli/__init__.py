"""Command-line interface: every command parses its options and makes one call into the Python API."""

# commands are listed in --help in the order their modules register them: analyse and report last
# isort: off
from . import data_commands, experiment_commands, run_commands  # noqa: F401
from . import analysis_commands  # noqa: F401
from .common import app
# isort: on

__all__ = ["app"]
