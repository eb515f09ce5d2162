"""What an existing slice cache (``data.cache``) already holds, for ``prepare`` to re-use or keep.

``prepare`` into an existing cache re-uses a subject whose fingerprint is unchanged and whose arrays still
match their SHA-256 record (``reusable``), keeps in its tables the subjects of sources this run does not
name (``earlier_subjects``) and drops listed subjects whose folder is gone or damaged. Subjects written
before ``meta.json`` recorded their data folder are matched to their source through ``cache.json``
(``data_folder``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd

from .slices import ARRAYS, verify_subject


def data_folder(meta: dict, old_sources: list[dict]) -> str | None:
    """The resolved data folder a cached subject was read from: ``meta["data"]``, or, for subjects written
    before meta recorded it, the earlier source of its reader in ``cache.json`` (the one holding its
    ``source`` path when there are several); None when that cannot be told."""
    if meta.get("data"):
        return str(meta["data"])
    same = [str(s.get("data")) for s in old_sources if s.get("reader") == meta.get("reader") and s.get("data")]
    if len(same) == 1:
        return same[0]
    try:
        src = Path(str(meta.get("source") or "")).resolve()
    except (OSError, ValueError):
        return None
    inside = [d for d in same if src.is_relative_to(Path(d))]
    return max(inside, key=len) if inside else None


def belongs_to(meta: dict, named: list[tuple[str, str]], old_sources: list[dict]) -> bool:
    """Was this cached subject read from one of the ``(reader, resolved data folder)`` sources? (A subject
    whose folder cannot be told belongs to any source of its reader: it is prepared again, not duplicated.)"""
    data = data_folder(meta, old_sources)
    return any(meta.get("reader") == reader and (data is None or data == folder) for reader, folder in named)


def earlier_subjects(out: Path, named: list[tuple[str, str]], size: int, old_sources: list[dict]
                      ) -> tuple[dict[str, dict], dict[str, tuple[Path, str]]]:
    """(the subjects the cache's tables list now that none of this run's sources owns: kept in the tables,
    the listed subjects whose folder is gone or damaged: key -> (file, problem), dropped)."""
    table = out / "subjects.csv"
    if not table.is_file():
        return {}, {}
    try:
        keys = [str(k) for k in pd.read_csv(table, usecols=["subject"])["subject"]]
    except (OSError, ValueError, pd.errors.ParserError) as e:
        warnings.warn(f"{table}: cannot read the subjects table ({e}); earlier subjects are not kept", stacklevel=4)
        return {}, {}
    kept, damaged = {}, {}
    for key in keys:
        folder = out / "subjects" / key
        try:
            meta = json.loads((folder / "meta.json").read_text())
            problems = verify_subject(folder, meta, size, level="size")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            problems = [(folder / "meta.json", f"unreadable subject record ({e})")]
            meta = None
        if meta is not None and belongs_to(meta, named, old_sources):
            continue  # its source is prepared again now: it comes back if that source still has it
        if problems:
            damaged[key] = problems[0]
            continue
        kept[key] = meta
    return kept, damaged


def reusable(out: Path, meta: dict | None, size: int) -> dict | None:
    """``meta`` if its subject's arrays match their record in full (SHA-256), else None (prepare again).
    Old subjects without a record are prepared again: nothing says what their arrays should hold."""
    if meta is None:
        return None
    folder = out / "subjects" / meta["key"]
    if not meta.get("arrays"):
        return None
    try:
        problems = verify_subject(folder, meta, size, level="hash")
    except (KeyError, TypeError, ValueError) as e:
        problems = [(folder / "meta.json", f"subject record is damaged ({e})")]
    if problems:
        path, problem = problems[0]
        warnings.warn(f"{path}: {problem}; preparing {meta['subject_id']} again", stacklevel=3)
        return None
    return meta


def finished_subjects(out: Path) -> dict[tuple[str, str], dict]:
    """Finished subject folders of a cache, by (reader, fingerprint)."""
    metas = {}
    for meta_path in (out / "subjects").glob("*/meta.json"):
        try:
            m = json.loads(meta_path.read_text())
            key = (m["reader"], m["fingerprint"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            continue  # a broken record is recomputed
        if all((meta_path.parent / f).exists() for f in ARRAYS):
            metas[key] = m
    return metas
