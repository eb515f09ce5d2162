"""Fixed test sets named the way a researcher has them: a dataset folder (ACDC's official ``testing/``) or
a list of subjects. Both resolve to cache subject keys for ``splits.make_split(test_subjects=...)``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import DataError


def subjects_from_source(cache, reader: str, path: str | Path) -> list[str]:
    """Keys of the cached subjects that ``reader`` finds at ``path``; ``DataError`` naming those not in the cache.

    ``cache``: a ``SliceCache``. A cached subject is the one read from ``path / <reader's id>``: its meta
    records the data folder and the reader's id (``data``, ``reader_id``); for subjects prepared before
    that was recorded, its ``source`` file or folder lying under ``path``."""
    from .readers import get_reader

    path = Path(path)
    if not path.is_dir():
        raise DataError(path, f"no such folder (--test-from {reader}={path})")
    ids = get_reader(reader).subject_ids(path)
    if not ids:
        raise DataError(path, f"no subjects found for reader {reader!r} (is this the right layout?)")
    root = path.resolve()
    wanted = {(root / sid).resolve(): sid for sid in ids}
    found: dict[str, str] = {}  # reader id -> cache key
    for key in cache.subjects["subject"].astype(str):
        meta = cache.meta(key)
        if meta.get("reader") != reader:
            continue
        if meta.get("data") and meta.get("reader_id") is not None:
            sid = wanted.get((Path(meta["data"]) / str(meta["reader_id"])).resolve())
        else:
            src = Path(str(meta.get("source") or "")).resolve()
            sid = next((i for full, i in wanted.items() if src == full or src.is_relative_to(full)), None)
        if sid is not None:
            found[sid] = key
    missing = [sid for sid in ids if sid not in found]
    if missing:
        raise DataError(path, f"{len(missing)} of the {len(ids)} {reader} subject(s) here are not in the cache "
                              f"{cache.path} ({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}): "
                              f"prepare this folder into it first (cardiossp prepare --reader {reader} --data {path} "
                              f"--out {cache.path} keeps the cache's other sources)")
    return sorted(found.values())


def read_subject_list(path: str | Path, subjects: pd.DataFrame) -> list[str]:
    """``--test-list FILE``: one subject per line (a cache key such as ``acdc_patient101``, or a reader's subject
    id such as ``patient101`` when it names one cached subject); blank lines and ``#`` comments skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read the subject list: {e}") from None
    keys = set(subjects["subject"].astype(str))
    by_id: dict[str, list[str]] = {}
    if "subject_id" in subjects:
        for k, sid in zip(subjects["subject"].astype(str), subjects["subject_id"].astype(str)):
            by_id.setdefault(sid, []).append(k)
    out, unknown = [], []
    for n, line in enumerate(lines, 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        if item in keys:
            out.append(item)
        elif len(by_id.get(item, [])) == 1:
            out.append(by_id[item][0])
        elif len(by_id.get(item, [])) > 1:
            raise DataError(path, f"line {n}: {item!r} names {len(by_id[item])} cached subjects "
                                  f"({', '.join(by_id[item][:4])}); give the cache key")
        else:
            unknown.append(item)
    if unknown:
        raise DataError(path, f"{len(unknown)} subject(s) not in the cache: {', '.join(unknown[:8])}")
    if not out:
        raise DataError(path, "lists no subject")
    return sorted(set(out))
