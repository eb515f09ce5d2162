"""``python -m cardiossp`` runs the command-line interface."""

from .cli import app

app()
