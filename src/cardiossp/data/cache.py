"""On-disk slice cache: one folder per subject with memory-mapped arrays, plus a manifest table.

Layout of a cache folder::

    cache.json                  spacing, size, format version, the sources that fed it
    manifest.csv                one row per 2D slice (see MANIFEST_COLUMNS)
    subjects.csv                one row per subject
    subjects/<key>/image.npy    (T, Z, S, S) float16, z-scored
    subjects/<key>/labels.npy   (L, Z, S, S) uint8 internal labels of the L labeled frames
    subjects/<key>/native_labels.npy  (L, X, Y, Z) uint8 the same labels on the native grid
    subjects/<key>/meta.json    metadata, labeled frames, geometry for the inverse mapping

A subject folder counts as done only once ``meta.json`` exists; arrays are written to a
temporary name and renamed first, so an interrupted ``prepare`` leaves nothing a later
run trusts. ``meta.json`` records each array's shape, dtype, byte size and SHA-256
(``meta["arrays"]``). Re-running ``prepare`` skips subjects whose fingerprint (reader, source
files' sizes and times, spacing, size) is unchanged *and* whose arrays still match that record
in full (SHA-256); a damaged subject is prepared again, with a warning naming the file. Subjects
of caches written before the record existed are prepared again (their arrays cannot be verified).
Readers of the cache (``SliceCache``) check sizes on opening it, see ``cardiossp.data.slices``.

Several sources, several runs: ``prepare`` into an existing cache *adds* its sources. The tables
(``manifest.csv``, ``subjects.csv``, ``cache.json`` ``sources``) keep every subject of earlier sources
(``(reader, data folder)`` pairs) that this run does not name, and replace those of the sources it names
by what their folders hold now; e.g. ACDC's ``training/`` and then ``testing/`` into one cache gives all
150 patients. A subject key that another source already holds is refused (``DataError``) before its
folder is written. ``meta.json`` records the resolved data folder (``data``) and the reader's subject id
(``reader_id``) a subject came from (``split --test-from`` finds subjects by them); for subjects written
before, the folder is inferred from ``cache.json``'s sources, and both fields are added when reused. What an
existing cache holds and may re-use or keep: ``data.cache_reuse``.

One writer at a time: ``prepare`` holds an exclusive ``fcntl.flock`` on ``<cache>/.prepare.lock`` (a
second ``prepare``, or a second ``experiment --shard`` job, of the same cache waits, saying who holds
it, and then reuses what the first wrote). The kernel drops the lock of a process that dies, so a
stale lock file left by a killed run is simply taken over. ``cache_lock`` is re-entrant in a process.

A subject whose image is blank (one value everywhere), or whose labeled frame is, is refused
with a ``DataError`` naming it: labels on a blank image are wrong whatever they say, and a
silently smaller dataset changes every split; the subjects before it stay prepared, so a
re-run after removing or fixing the file resumes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_csv, write_json
from ..errors import DataError
from .cache_reuse import earlier_subjects, finished_subjects, reusable
from .locking import LOCK_NAME, cache_lock  # noqa: F401  (LOCK_NAME: part of this module's interface)
from .preprocess import preprocess_subject
from .readers import get_reader
from .slices import ARRAYS, array_record
from .subject import Subject

FORMAT_VERSION = 1
MANIFEST_COLUMNS = [
    "subject", "dataset", "vendor", "centre", "pathology", "view", "frame", "frame_number", "phase",
    "slice", "n_slices", "position", "labeled", "label_index",
]


def subject_key(subject: Subject) -> str:
    """A file-system safe, cache-wide unique key: ``<dataset>_<subject id>``."""
    sid = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(subject.subject_id).name)
    return f"{subject.dataset}_{sid}"


def _fingerprint(reader: str, sid: str, files: list[Path], spacing: float, size: int) -> str:
    """Changes when the reader, the subject, the target grid, or any source file's path, size or mtime
    does (the subject id keeps subjects without source files, e.g. the phantom's, apart)."""
    h = hashlib.sha1(f"{FORMAT_VERSION}|{reader}|{sid}|{spacing}|{size}".encode())
    for p in sorted(files):
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:  # np.save appends .npy to any other name
        np.save(tmp, array)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def write_subject(out: Path, subject: Subject, reader: str, fingerprint: str, spacing: float, size: int,
                  data: str | None = None, reader_id: str | None = None) -> dict:
    """Preprocess one subject into ``out/subjects/<key>/``; returns its meta record (``data``: the resolved
    data folder it was read from, ``reader_id``: the reader's id of it there)."""
    key = subject_key(subject)
    check_not_blank(subject)
    folder = out / "subjects" / key
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    pre = preprocess_subject(subject, spacing, size)
    _save_npy_atomic(folder / "image.npy", pre.image.astype(np.float16))
    label_frames = sorted(pre.labels)
    labels = (np.stack([pre.labels[t] for t in label_frames]) if label_frames
              else np.zeros((0, subject.n_slices, size, size), np.uint8))
    _save_npy_atomic(folder / "labels.npy", labels)
    # Native-grid labels (L, X, Y, Z): metrics are computed against these, not the resampled ones.
    native = (np.stack([subject.labels[t] for t in label_frames]) if label_frames
              else np.zeros((0, *subject.image.shape[:3]), np.uint8))
    _save_npy_atomic(folder / "native_labels.npy", native.astype(np.uint8))
    meta = {
        "key": key, "subject_id": subject.subject_id, "dataset": subject.dataset, "reader": reader, "data": data,
        "reader_id": reader_id, "vendor": subject.vendor, "centre": subject.centre, "pathology": subject.pathology,
        "view": subject.view,
        "source": subject.source, "fingerprint": fingerprint, "n_frames": subject.n_frames,
        "n_slices": subject.n_slices, "ed_frame": subject.ed_frame, "es_frame": subject.es_frame,
        "frame_numbers": list(subject.frame_numbers or []), "label_frames": label_frames,
        "positions": pre.positions.tolist(), "geometry": pre.geometry.to_dict(),
        "extra": {k: v for k, v in subject.extra.items() if isinstance(v, (str, int, float, bool))},
        # Partially contoured frames (Sunnybrook): only these slices count as labeled.
        "labeled_slices": {str(t): [int(z) for z in zs] for t, zs in subject.extra.get("labeled_slices", {}).items()},
        # what was written: reuse and readers verify the files against it
        "arrays": {name: array_record(folder / name) for name in ARRAYS},
    }
    write_json(folder / "meta.json", meta, default=_json_default)  # written last: marks the subject done
    return meta


def check_not_blank(subject: Subject) -> None:
    """Refuse a subject whose image, or one of whose labeled frames, has one value everywhere."""
    img = subject.image
    if img.size and float(img.max()) == float(img.min()):
        raise DataError(subject.source or None, f"image of {subject.subject_id} is blank: every voxel is "
                                                f"{float(img.min()):g} (empty or failed export?)")
    for t in sorted(subject.labels):
        frame = img[..., t]
        if float(frame.max()) == float(frame.min()):
            raise DataError(subject.source or None, f"frame {t} of {subject.subject_id} has labels but its image is "
                                                    f"blank (every voxel {float(frame.min()):g})")


def manifest_rows(meta: dict) -> list[dict]:
    rows = []
    label_index = {t: i for i, t in enumerate(meta["label_frames"])}
    partial = {int(t): set(zs) for t, zs in meta.get("labeled_slices", {}).items()}
    for t in range(meta["n_frames"]):
        phase = "ED" if t == meta["ed_frame"] else "ES" if t == meta["es_frame"] else "unlabeled"
        for z in range(meta["n_slices"]):
            rows.append({
                "subject": meta["key"], "dataset": meta["dataset"], "vendor": meta["vendor"],
                "centre": meta["centre"], "pathology": meta["pathology"], "view": meta["view"], "frame": t,
                "frame_number": meta["frame_numbers"][t] if meta["frame_numbers"] else t, "phase": phase,
                "slice": z, "n_slices": meta["n_slices"], "position": meta["positions"][z],
                "labeled": t in label_index and (t not in partial or z in partial[t]),
                "label_index": label_index.get(t, -1),
            })
    return rows


def prepare(
    sources: Iterable[tuple[str, str | Path]],
    out: str | Path,
    spacing: float = 1.25,
    size: int = 256,
    progress: Callable[[str, int, int, bool], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Path:
    """Build (or add to) a cache at ``out`` from ``(reader name, data folder)`` pairs (see the module docstring).

    ``progress(subject_id, i, n, reused)`` is called after each subject; ``on_wait(message)`` if another
    process is writing the cache and this one waits for it (default: a warning).
    """
    out = Path(out)
    with cache_lock(out, on_wait):
        return _prepare(list(sources), out, spacing, size, progress)


def _prepare(sources: list[tuple[str, str | Path]], out: Path, spacing: float, size: int, progress) -> Path:
    (out / "subjects").mkdir(parents=True, exist_ok=True)
    info_path = out / "cache.json"
    info: dict = {}
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if (info.get("spacing"), info.get("size")) != (spacing, size):
            raise DataError(out, f"cache holds spacing {info.get('spacing')} / size {info.get('size')}; "
                                 f"asked for {spacing} / {size}: use another --out folder")
    named = [(r, str(Path(d).resolve())) for r, d in sources]
    kept, damaged = earlier_subjects(out, named, size, info.get("sources", []))
    kept_sources = [s for s in info.get("sources", []) if (s.get("reader"), s.get("data")) not in named]
    metas: dict[str, dict] = {}
    done = finished_subjects(out)
    old = sum(1 for m in done.values() if not m.get("arrays"))
    if old:
        warnings.warn(f"{out}: {old} cached subject(s) were written before caches recorded their arrays' "
                      "checksums; they are prepared again", stacklevel=3)
    source_list = []
    for (reader_name, data), (_, resolved) in zip(sources, named):
        reader, root = get_reader(reader_name), Path(data)
        if not root.is_dir():
            raise DataError(root, "data folder not found")
        ids = reader.subject_ids(root)
        if not ids:
            raise DataError(root, f"no subjects found for reader {reader_name!r} (is this the right layout?)")
        source_list.append({"reader": reader_name, "data": resolved, "subjects": len(ids)})
        for i, sid in enumerate(ids):
            fp = _fingerprint(reader_name, sid, reader.source_files(root, sid), spacing, size)
            meta = reusable(out, done.get((reader_name, fp)), size)
            reused = meta is not None
            if meta is None:
                subject = reader.load(root, sid)
                _check_key(root / sid, subject_key(subject), metas, kept)
                meta = write_subject(out, subject, reader_name, fp, spacing, size, data=resolved, reader_id=sid)
            else:
                _check_key(root / sid, meta["key"], metas, kept)
                if (meta.get("data"), meta.get("reader_id")) != (resolved, sid):  # written before they were recorded
                    meta = {**meta, "data": resolved, "reader_id": sid}
                    write_json(out / "subjects" / meta["key"] / "meta.json", meta, default=_json_default)
            metas[meta["key"]] = meta
            if progress:
                progress(sid, i + 1, len(ids), reused)
    for key, (path, problem) in damaged.items():
        if key not in metas:  # not brought back by this run
            warnings.warn(f"{path}: {problem}; {key} is dropped from the cache's tables (prepare its source again "
                          "to bring it back)", stacklevel=3)
    metas.update(kept)
    _write_tables(out, metas)
    write_json(info_path, {"format_version": FORMAT_VERSION, "spacing": spacing, "size": size,
                           "sources": kept_sources + source_list, "n_subjects": len(metas)}, default=_json_default)
    return out


def _check_key(where: Path, key: str, metas: dict[str, dict], kept: dict[str, dict]) -> None:
    """A subject key met twice in this run, or held by an earlier source of the cache, is refused before
    its folder is (over)written."""
    if key in metas:
        raise DataError(where, f"subject key {key!r} occurs twice in the inputs")
    if key in kept:
        m = kept[key]
        raise DataError(where, f"subject key {key!r} is already in the cache from another source "
                               f"({m.get('reader')}, {m.get('data') or m.get('source')}); give it another name, or "
                               "prepare into another cache folder")


def _write_tables(out: Path, metas: dict[str, dict]) -> None:
    rows = [r for key in sorted(metas) for r in manifest_rows(metas[key])]
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    write_csv(out / "manifest.csv", manifest)
    subj = pd.DataFrame([{
        "subject": m["key"], "subject_id": m["subject_id"], "dataset": m["dataset"], "vendor": m["vendor"],
        "centre": m["centre"], "pathology": m["pathology"], "view": m["view"], "n_frames": m["n_frames"],
        "n_slices": m["n_slices"], "labeled_frames": len(m["label_frames"]),
        "spacing_x": m["geometry"]["spacing"][0], "spacing_y": m["geometry"]["spacing"][1],
        "spacing_z": m["geometry"]["spacing"][2],
        # splits keep a patient's subjects together (CAMUS: 2CH + 4CH) and can follow a dataset's own split
        "patient": m["extra"].get("patient"), "official_split": m["extra"].get("official_split"),
        # why vendor / centre are unknown (no or garbled info CSV): info reports it, vendor splits name it
        "metadata_missing": m["extra"].get("metadata_missing"),
    } for _, m in sorted(metas.items())])
    optional = ("patient", "official_split", "metadata_missing")
    subj = subj.drop(columns=[c for c in optional if c in subj and subj[c].isna().all()])
    write_csv(out / "subjects.csv", subj)
