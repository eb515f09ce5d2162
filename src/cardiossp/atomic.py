"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything is written to a temporary sibling (same folder, so the final ``os.replace`` is a rename
on one file system) named ``.<name>.tmp-<pid>-<n>[suffix]`` and renamed onto the target only when
the write succeeded; on an error the temporary file is removed and the target left as it was.
The target's folder is created if needed.

``write_text``, ``write_bytes``, ``write_json``, ``write_yaml``, ``write_csv`` (a DataFrame) and
``save_torch`` cover the common cases; ``atomic_path`` is the general form, for other writers that
take a path (``np.save``, ``nib.save``, ``fig.savefig``); writers that pick the format from the file name get
it through ``suffix`` (``atomic_path(out, suffix=".nii.gz")``, ``suffix=".npy"``, which
``np.save`` would otherwise append).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_counter = itertools.count()  # distinct temporary names for concurrent writes of one process


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{next(_counter)}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    """``json.dumps(obj, indent=2, **dumps_kwargs)`` (e.g. ``default=str``, ``allow_nan=False``)."""
    return write_text(path, json.dumps(obj, **{"indent": 2, **dumps_kwargs}))


def write_csv(path: str | Path, frame: Any, index: bool = False, **to_csv_kwargs: Any) -> Path:
    """``frame.to_csv(path, index=index, **to_csv_kwargs)`` of a pandas DataFrame."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index, **to_csv_kwargs)
    return Path(path)


def write_yaml(path: str | Path, obj: Any) -> Path:
    """``yaml.safe_dump(obj, sort_keys=False)``."""
    import yaml

    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)``, atomically (argument order as ``torch.save``'s)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
