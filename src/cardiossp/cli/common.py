"""The Typer app, the console, the one top-level error handler and small helpers shared by every command module.

Error handling (one place, ``CliGroup.invoke``): every command runs inside it; an error a user can act on
(any ``CardiosspError``, ``OSError``, a YAML / pickle / zip / NIfTI / DICOM read error, anything raised
inside ``torch.load``) becomes exactly one line ``error: <file>: <problem>`` on stderr and exit code 2.
The global ``--debug`` option (or ``CARDIOSSP_DEBUG=1``) lets the exception through with its traceback.
A usage error of a command (a bad option value, a missing argument, an unknown option or
command) becomes ``error: <command>: <problem> (see '<command> --help')``, also exit code 2.
Any other exception is a bug and keeps its traceback. It works the same through the console script
(``cardiossp``), ``python -m cardiossp`` and ``typer.testing.CliRunner``, since all run the click group.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import zipfile

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from ..errors import CardiosspError

DEBUG_ENV = "CARDIOSSP_DEBUG"
console = Console(stderr=True)
_state = {"debug": False}  # of the invocation running now (set by CliGroup.invoke, read by fail)


def _control_flow() -> tuple[type[BaseException], ...]:
    """Exceptions click / Typer use to exit, abort or report a usage error: never turned into an error line
    (from typer itself and from the click it runs on, vendored as ``typer._click`` in recent Typer)."""
    cx = sys.modules.get(typer.BadParameter.__module__)
    found = [getattr(typer, n, None) for n in ("Exit", "Abort", "TyperException")]
    found += [getattr(cx, n, None) for n in ("ClickException", "Exit", "Abort")]
    return tuple(c for c in found if isinstance(c, type) and issubclass(c, BaseException))


def _usage_error() -> type[BaseException]:
    """click's ``UsageError`` (bad option value, missing argument, unknown command or option)."""
    return sys.modules[typer.BadParameter.__module__].UsageError


def _library_errors() -> tuple[type[BaseException], ...]:
    """Read errors of the libraries that parse user files (imported only if already loaded or cheap)."""
    import yaml

    errors: list[type[BaseException]] = [yaml.YAMLError, pickle.UnpicklingError, zipfile.BadZipFile,
                                         zipfile.LargeZipFile]
    if "nibabel" in sys.modules:
        from nibabel.filebasedimages import ImageFileError
        from nibabel.spatialimages import HeaderDataError

        errors += [ImageFileError, HeaderDataError]
    if "pydicom" in sys.modules:
        from pydicom.errors import InvalidDicomError

        errors.append(InvalidDicomError)
    return tuple(errors)


# (file of the library function, function name, argument naming the file being read)
_READERS = (("torch/serialization.py", "load", "f"), ("nibabel/loadsave.py", "load", "filename"),
            ("pydicom/filereader.py", "dcmread", "fp"), ("pydicom/filereader.py", "read_partial", "fileobj"))


def _file_being_read(e: BaseException) -> tuple[str | None, bool]:
    """(the file a library reader was reading when ``e`` was raised, whether ``torch.load`` raised it)."""
    tb, found, in_torch = e.__traceback__, None, False
    while tb is not None:
        code = tb.tb_frame.f_code
        name = code.co_filename.replace(os.sep, "/")
        for suffix, func, arg in _READERS:
            if name.endswith(suffix) and code.co_name == func:
                f = tb.tb_frame.f_locals.get(arg)
                if isinstance(f, (str, os.PathLike)):
                    found = os.fspath(f)
                elif getattr(f, "name", None) is not None:
                    found = str(f.name)
                in_torch = in_torch or suffix.startswith("torch/")
        tb = tb.tb_next
    return found, in_torch


def _flatten(text: str) -> str:
    """One line: a DataLoader worker's re-raised error keeps its last line (the original error)."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if any(ln.startswith("Original Traceback") for ln in lines):
        last = lines[-1]
        head, sep, rest = last.partition(": ")
        return rest if sep and "." in head and " " not in head else last
    return " ".join(lines)


def error_line(e: BaseException) -> str | None:
    """``<file>: <problem>`` for an error a user can act on, None for anything else (a bug)."""
    if isinstance(e, CardiosspError):
        return _flatten(str(e))
    if isinstance(e, OSError) and e.filename is not None:  # the file system's error about a named file
        return _os_error(e)
    path, in_torch = _file_being_read(e)
    if isinstance(e, RuntimeError) and "Original Traceback" in str(e) and "cardiossp.errors." in str(e):
        return _flatten(str(e))  # a CardiosspError raised in a DataLoader worker
    if in_torch:  # anything torch.load raised: the file's content is the problem
        from ..models.weights import describe_load_error

        return f"{path or 'torch file'}: {describe_load_error(e, path)}"
    if isinstance(e, OSError) and e.strerror and not path:
        return _os_error(e)
    if isinstance(e, (*_library_errors(), OSError)):
        problem = _flatten(str(e)) or type(e).__name__
        if path and path in problem:
            return problem
        return f"{path}: {problem}" if path else f"{type(e).__name__}: {problem}"
    return None


def _os_error(e: OSError) -> str:
    """``<file>: <strerror>``, saying which path is a file when a folder was needed."""
    from pathlib import Path

    problem = e.strerror or type(e).__name__
    if e.filename is None:
        return problem
    where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
    if isinstance(e.filename, (str, bytes, os.PathLike)):
        p = Path(os.fsdecode(e.filename))
        if isinstance(e, FileExistsError) and p.is_file():
            problem = "is a file, not a folder"
        elif isinstance(e, (NotADirectoryError, FileNotFoundError, FileExistsError)):
            blocker = next((q for q in p.parents if q.is_file()), None)
            if blocker is not None:
                problem = f"{problem}: {blocker} is a file, not a folder"
    return f"{where}: {problem}"


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, one line, no markup interpreted in ``message``."""
    console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True, highlight=False)


def debug_enabled(ctx=None) -> bool:
    """``--debug`` given to the group (``ctx``), or ``CARDIOSSP_DEBUG`` set to 1 / true / yes / on."""
    if ctx is not None and ctx.params.get("debug"):
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _usage_exit(command: str, e) -> None:
    """``error: <command>: <problem> (see '<command> --help')`` and exit code 2, for a usage error."""
    print_error(f"{command}: {_flatten(e.format_message())} (see '{command} --help')")
    raise typer.Exit(code=2) from None


class CliGroup(TyperGroup):
    """The app's click group: the one top-level handler (see the module docstring)."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:  # the group's own options (``cardiossp --debugx``)
            return super().make_context(info_name, args, parent=parent, **extra)
        except _usage_error() as e:
            if debug_enabled():
                raise
            _usage_exit(info_name, e)

    def invoke(self, ctx):
        _state["debug"] = debug_enabled(ctx)
        try:
            return super().invoke(ctx)
        except _usage_error() as e:  # a command's bad option or argument, an unknown command
            if _state["debug"]:
                raise
            _usage_exit(e.ctx.command_path if e.ctx is not None else ctx.command_path, e)
        except _control_flow():
            raise
        except Exception as e:  # noqa: BLE001 - sorted by error_line: known errors -> one line, bugs re-raised
            line = error_line(e)
            if line is None or _state["debug"]:
                raise
            print_error(line)
            raise typer.Exit(code=2) from None


app = typer.Typer(cls=CliGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Self-supervised pretraining and few-label fine-tuning for cardiac cine MR segmentation.\n\n"
                       "Labels everywhere: 0 background, 1 LV, 2 MYO, 3 RV.")


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", envvar=DEBUG_ENV,
                               help=f"show the full traceback of an error (also {DEBUG_ENV}=1)"),
) -> None:
    """Self-supervised pretraining and few-label fine-tuning for cardiac cine MR segmentation."""


def fail(e: Exception) -> None:
    """Print a one-line error and exit with status 2 (no traceback for expected errors); with ``--debug``
    re-raise ``e`` instead, for its traceback."""
    if (_state["debug"] or debug_enabled()) and e.__traceback__ is not None:
        raise e
    print_error(error_line(e) or _flatten(str(e)))
    raise typer.Exit(code=2)


def print_table(df, title: str = "") -> None:
    table = Table(title=title or None)
    for c in df.columns:
        table.add_column(str(c))
    for row in df.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@contextlib.contextmanager
def subject_progress(what: str):
    """A progress callback ``update(name, i, n, note="")`` for work done item by item (subjects, files).

    On a terminal: a transient Rich bar. Anywhere else (a cluster job's log, CI, a pipe): one plain line per
    item on stderr, ``<what> i/n (p%) <name> <note> | <elapsed> elapsed, ETA <eta>`` (``progress.ProgressLines``),
    never a carriage return. ``prepare`` passes ``lambda sid, i, n, reused: update(sid, i, n, "(cached)" if
    reused else "")``; ``evaluate`` and ``predict`` pass ``update`` itself (their callbacks are ``(name, i, n)``)."""
    if console.is_terminal:
        from rich.progress import Progress

        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(what, total=None)

            def update(name, i: int, n: int, note: str = "") -> None:
                bar.update(task, completed=i, total=n, description=f"{name}{' ' + note if note else ''}")

            yield update
        return
    from ..progress import ProgressLines, stderr_line

    lines = ProgressLines(0, what, emit=stderr_line, every=1)  # the clock starts now

    def update(name, i: int, n: int, note: str = "") -> None:
        lines.total = int(n)
        lines.update(int(i), f"{name}{' ' + note if note else ''}")

    yield update
