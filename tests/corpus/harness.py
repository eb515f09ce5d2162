"""The bad-input corpus (issue 15): every case runs a real command on a bad input and checks
what a user sees: exit code 2, one ``error:`` line naming the file (or key) and the problem,
no traceback, and nothing left behind that a rerun would trust."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cardiossp.cli import app

runner = CliRunner()


def invoke(*args: str | Path, env: dict | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def assert_clean_failure(result, *needles: str | Path, code: int = 2) -> str:
    """Exit ``code``, no traceback, an ``error:`` line holding every needle; returns that line."""
    text = result.output
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}:\n{text}"
    assert "Traceback" not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, f"expected one 'error:' line:\n{text}"
    for n in needles:
        assert str(n) in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def left_behind(folder: Path, trusted: tuple[str, ...] = ("done.json", "cache.json", "model.pt")) -> list[Path]:
    """Files under ``folder`` that a rerun would take as finished work."""
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.name in trusted]
