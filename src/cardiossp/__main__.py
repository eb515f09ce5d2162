"""``python -m cardiossp`` runs the command-line interface (errors: one line, see ``cli.common.CliGroup``)."""

from .cli import app

if __name__ == "__main__":
    app(prog_name="cardiossp")
