"""Errors that name the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class CardiosspError(Exception):
    """Base class for every error this package raises on purpose."""


class DataError(CardiosspError):
    """Bad input data: names the offending file and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}")


class ConfigError(CardiosspError):
    """A configuration, preset or command-line value that cannot be used."""


class CheckpointError(CardiosspError):
    """A checkpoint that cannot be loaded into the requested model."""
