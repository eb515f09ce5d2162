"""How a state dict fits a model: one comparison for every loader.

``fit_state_dict(model, state, source)`` sorts the keys of ``state`` against ``model.state_dict()``
into those that fit (same name and shape), the model's keys ``state`` lacks (missing), the keys the
model lacks (unexpected) and the keys of both with other shapes (mismatched). The loaders decide
what is acceptable: a checkpoint (inference) and an encoder file (``load_encoder_weights_file``)
must fit exactly, pretrained weights (fine-tuning) load what fits and report the rest, an nnU-Net
export completes pretrained weights with a fresh initialisation.

Reading and writing weight files (every torch file cardiossp reads goes through ``load_torch_file``):

- ``load_torch_file(path, what)`` reads with ``torch.load(weights_only=True)`` passed explicitly (so
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off) and turns every failure into one
  ``CheckpointError("<path>: cannot read <what>: <why>")``: not a torch file, truncated or damaged,
  or refused because it holds Python objects besides tensors (loading those could run code).
- Checksums: ``save_weights(obj, path)`` writes ``path`` and a ``sha256sum``-style sidecar
  ``<path>.sha256`` (one line ``<64 hex digits>  <file name>``; ``sha256sum -c`` checks it from the
  file's folder). ``load_torch_file`` checks the sidecar when there is one: a mismatch is a
  ``CheckpointError``; a file without one loads (``warn_unrecorded`` warns for our own files, e.g. a
  ``pretrained.pt`` written before checksums were recorded; Lightning's ``.ckpt`` files have none).
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checksum import sha256_file
from ..errors import CheckpointError

CHECKSUM_SUFFIX = ".sha256"
NOT_TORCH = "not a checkpoint (cannot be read as a torch file)"


# ---------------------------------------------------------------- checksums
def checksum_path(path: str | Path) -> Path:
    """The sidecar ``<path>.sha256`` that records ``path``'s SHA-256."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path: str | Path) -> str:
    """Record ``path``'s SHA-256 in ``<path>.sha256`` (atomically, ``sha256sum`` format); returns it."""
    from ..atomic import write_text

    path = Path(path)
    digest = sha256_file(path)
    write_text(checksum_path(path), f"{digest}  {path.name}\n")
    return digest


def verify_checksum(path: str | Path) -> bool:
    """Check ``path`` against its ``.sha256`` sidecar: True if it matches, False if there is no sidecar,
    a ``CheckpointError`` naming the file on a mismatch."""
    path, side = Path(path), checksum_path(path)
    if not side.is_file():
        return False
    try:
        fields = side.read_text(errors="replace").split()
    except OSError as e:
        raise CheckpointError(f"{side}: cannot read the checksum record: {e.strerror}") from None
    expected = fields[0].lower() if fields else ""
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise CheckpointError(f"{side}: not a SHA-256 record (expected one line '<64 hex digits>  {path.name}')")
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"{path}: SHA-256 checksum mismatch (file {actual[:12]}..., recorded in {side.name} "
                              f"{expected[:12]}...): the file was damaged or changed after it was written")
    return True


def save_weights(obj: Any, path: str | Path) -> str:
    """``torch.save(obj, path)`` atomically, then its checksum sidecar; returns the SHA-256."""
    from ..atomic import save_torch

    save_torch(obj, path)
    return write_checksum(path)


def warn_unrecorded(path: str | Path) -> None:
    """Warn that one of our weight files has no checksum record (written before they were recorded)."""
    path = Path(path)
    if not checksum_path(path).is_file():
        warnings.warn(f"{path}: no checksum record ({checksum_path(path).name}); loaded unchecked (written "
                      "before cardiossp recorded checksums?)", stacklevel=3)


# ---------------------------------------------------------------- the one safe loader
def describe_load_error(e: BaseException, path: str | Path | None = None) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in words (no traceback text)."""
    text = str(e)
    unsafe = re.search(r"GLOBAL ([\w.]+)", text)
    if unsafe:
        return (f"refused: it holds Python objects besides tensors ({unsafe.group(1)}); loading them could run "
                "code, and cardiossp reads weights only (weights_only=True)")
    if isinstance(e, EOFError) and path is not None and Path(path).is_file() and Path(path).stat().st_size == 0:
        return f"{NOT_TORCH}: the file is empty"
    if "PytorchStreamReader" in text or isinstance(e, zipfile.BadZipFile) or (
            path is not None and _is_zip(path) and isinstance(e, (RuntimeError, EOFError, OSError))):
        return "truncated or damaged torch file (its zip archive cannot be read)"
    return NOT_TORCH


def _is_zip(path: str | Path) -> bool:
    """Starts like a zip archive (torch's file format since 1.6), whole or not."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def load_torch_file(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` after the checksum check
    (``verify_checksum``); any failure is one ``CheckpointError`` naming ``path`` and ``what`` it should
    be. ``mmap=True`` maps the tensors instead of reading them (a cheap look at a large file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    verify_checksum(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (PermissionError, IsADirectoryError, FileNotFoundError) as e:  # the file system's, not the file's
        raise CheckpointError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - whatever the unpickler raised, the file is unusable
        raise CheckpointError(f"{path}: cannot read {what}: {describe_load_error(e, path)}") from None


@dataclass(frozen=True)
class FitReport:
    """Keys of a state dict (from ``source``) against a model's.

    fits: the state's tensors whose key and shape the model has (load with ``strict=False``).
    missing: the model's keys the state lacks (model order).
    unexpected: the state's keys the model lacks (state order).
    mismatched: ``key -> (shape in the state, shape in the model)`` (model order).
    """

    source: str
    fits: dict[str, Tensor]
    missing: list[str]
    unexpected: list[str]
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]

    @property
    def exact(self) -> bool:
        """Every key of the model is in the state with its shape, and nothing else."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 6, theirs: str = "checkpoint") -> str:
        """``"2 missing keys (a, b); 1 shape mismatches (k: checkpoint (3,) vs model (4,))"``, at most
        ``limit`` keys per kind; ``theirs`` names the state's side of a shape mismatch."""
        mismatched = [f"{k}: {theirs} {a} vs model {b}" for k, (a, b) in self.mismatched.items()]

        def show(what: str, items: list[str]) -> str:
            return f"{len(items)} {what} ({', '.join(items[:limit])}{' ...' if len(items) > limit else ''})"

        return "; ".join(show(what, items) for what, items in (
            ("missing keys", self.missing), ("unexpected keys", self.unexpected),
            ("shape mismatches", mismatched)) if items)  # fmt: skip

    def require_exact(self, what: str, hint: str = "", limit: int = 6, theirs: str = "checkpoint") -> None:
        """Raise ``CheckpointError("<source>: <what>: <describe()><hint>")`` unless ``exact``."""
        if not self.exact:
            raise CheckpointError(f"{self.source}: {what}: {self.describe(limit, theirs)}{hint}")


def fit_state_dict(model: nn.Module | Mapping[str, Tensor], state: Mapping[str, Tensor], source: str = "",
                   optional: tuple[str, ...] = ()) -> FitReport:  # fmt: skip
    """Compare ``state`` with ``model.state_dict()`` (or a state dict given as ``model``).

    ``optional``: key suffixes the state may lack without counting as missing (e.g.
    ``("num_batches_tracked",)`` for old torchvision files).
    """
    own = model.state_dict() if isinstance(model, nn.Module) else model
    return FitReport(
        source=str(source),
        fits={k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)},
        missing=[k for k in own if k not in state and not (optional and k.endswith(optional))],
        unexpected=[k for k in state if k not in own],
        mismatched={k: (tuple(state[k].shape), tuple(own[k].shape))
                    for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)},  # fmt: skip
    )
