"""Lazy read access to a slice cache written by ``cardiossp.data.cache.prepare``.

Arrays are opened as read-only memory maps on first use of a subject, per process (the
maps are not pickled, so DataLoader workers open their own): reading one slice reads
one slice from disk, never the whole dataset.

The cache verifies itself. Opening it (``SliceCache(path)``, as ``info``, ``split``, ``train``,
``evaluate`` do) checks, for every subject, that ``meta.json`` is there and that each array's
``.npy`` header and file size agree with the shape and dtype its metadata implies, and with the
byte size recorded at ``prepare`` (``meta["arrays"]``): cheap (one small read per file), and a
truncated or swapped array is a ``DataError`` naming the file. ``verify_subject(..., "hash")``
also checks the recorded SHA-256 (``prepare`` does before reusing a subject). Caches written
before the record existed are checked by shape, dtype and size only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..checksum import sha256_file
from ..errors import DataError
from .preprocess import Geometry

ARRAYS = ("image.npy", "labels.npy", "native_labels.npy")
REBUILD = "run `cardiossp prepare` again with the same inputs to rebuild it"


def expected_arrays(meta: dict, size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """File name -> (shape, dtype) that a subject's meta record implies (see ``cache.write_subject``)."""
    n_l = len(meta["label_frames"])
    return {
        "image.npy": ((int(meta["n_frames"]), int(meta["n_slices"]), size, size), "float16"),
        "labels.npy": ((n_l, int(meta["n_slices"]), size, size), "uint8"),
        "native_labels.npy": ((n_l, *(int(v) for v in meta["geometry"]["native_shape"])), "uint8"),
    }


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a ``.npy`` header, without reading the data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        return tuple(shape), np.dtype(dtype), f.tell()


def array_record(path: Path) -> dict:
    """What ``prepare`` records of a written array: shape, dtype, byte size, SHA-256."""
    shape, dtype, _ = npy_header(path)
    return {"shape": list(shape), "dtype": dtype.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def array_problem(path: Path, shape: tuple[int, ...], dtype: str, record: dict | None,
                  level: str = "size") -> str | None:
    """What is wrong with one cached array file (None: nothing). ``level``: "size" (header, dtype and
    byte size: reads ~100 bytes) or "hash" (also the recorded SHA-256: reads the whole file)."""
    if not path.is_file():
        return "cached array is missing"
    try:
        got_shape, got_dtype, offset = npy_header(path)
    except (OSError, ValueError, SyntaxError) as e:
        return f"cached array is not a readable .npy file ({e})"
    if record is not None and (list(got_shape) != list(record.get("shape", got_shape))
                               or got_dtype.name != record.get("dtype", got_dtype.name)):
        return (f"cached array holds {got_dtype.name} {got_shape}, recorded "
                f"{record.get('dtype')} {record.get('shape')}")
    if got_shape != tuple(shape) or got_dtype.name != dtype:
        return f"cached array holds {got_dtype.name} {got_shape}, expected {dtype} {tuple(shape)}"
    size = path.stat().st_size
    want = offset + int(np.prod(got_shape, dtype=np.int64)) * got_dtype.itemsize
    if record is not None and "bytes" in record:
        want = int(record["bytes"])
    if size != want:
        return f"cached array is {size:,} bytes, expected {want:,} ({'truncated' if size < want else 'extra bytes'})"
    if level == "hash" and record is not None and "sha256" in record and sha256_file(path) != record["sha256"]:
        return "cached array differs from its recorded SHA-256 (damaged on disk?)"
    return None


def verify_subject(folder: Path, meta: dict, size: int, level: str = "size") -> list[tuple[Path, str]]:
    """[(file, problem)] of a subject folder's arrays against its meta record (empty: all good)."""
    records = meta.get("arrays") or {}
    out = []
    for name, (shape, dtype) in expected_arrays(meta, size).items():
        problem = array_problem(folder / name, shape, dtype, records.get(name), level)
        if problem:
            out.append((folder / name, problem))
    return out


def raise_damaged(problems: list[tuple[Path, str]]) -> None:
    """One ``DataError`` naming the first damaged file (and how many more there are)."""
    if not problems:
        return
    path, problem = problems[0]
    more = f"; {len(problems) - 1} more damaged file(s), e.g. {problems[1][0]}" if len(problems) > 1 else ""
    raise DataError(path, f"{problem}{more}: {REBUILD}")


class SliceCache:
    """``verify``: "size" (default: every subject's arrays by header and byte size, see the module
    docstring), "hash" (also SHA-256: reads the whole cache) or None (no check)."""

    def __init__(self, path: str | Path, verify: str | None = "size"):
        self.path = Path(path)
        info = self.path / "cache.json"
        if not info.is_file():
            raise DataError(self.path, "not a cardiossp cache (no cache.json); run `cardiossp prepare` first")
        try:
            self.info = json.loads(info.read_text())
            self.size = int(self.info["size"])
            self.spacing = float(self.info["spacing"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(info, f"damaged cache record ({type(e).__name__}: {e}): {REBUILD}") from None
        tables = {}
        for name in ("manifest.csv", "subjects.csv"):
            try:
                tables[name] = pd.read_csv(self.path / name, dtype={"subject": str, "vendor": str, "centre": str})
            except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
                raise DataError(self.path / name, f"cannot read the cache table ({e}): {REBUILD}") from None
        self.manifest, self.subjects = tables["manifest.csv"], tables["subjects.csv"]
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray] = {}
        self._meta: dict[str, dict] = {}
        if verify:
            self.verify(verify)

    def verify(self, level: str = "size") -> None:
        """Check every subject of the cache (see ``verify_subject``); a ``DataError`` names the first bad file."""
        problems: list[tuple[Path, str]] = []
        for subject in self.subject_ids():
            try:
                meta = self.meta(subject)
            except DataError as e:
                problems.append((e.path, e.problem))
                continue
            problems += verify_subject(self.path / "subjects" / subject, meta, self.size, level)
        raise_damaged(problems)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"], state["_labels"] = {}, {}
        return state

    def __len__(self) -> int:
        return len(self.manifest)

    def subject_ids(self) -> list[str]:
        return self.subjects["subject"].tolist()

    def meta(self, subject: str) -> dict:
        if subject not in self._meta:
            path = self.path / "subjects" / subject / "meta.json"
            if not path.is_file():
                raise DataError(path, f"subject {subject!r} is not in this cache (meta.json missing)")
            try:
                meta = json.loads(path.read_text())
                expected_arrays(meta, self.size)  # the keys everything else reads
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(path, f"damaged subject record ({type(e).__name__}: {e}): {REBUILD}") from None
            self._meta[subject] = meta
        return self._meta[subject]

    def _open(self, subject: str, name: str) -> np.ndarray:
        """Memory-map one array of a subject, checked against its meta record: a damaged file is a
        ``DataError`` naming it, never numpy's unnamed mmap error or a silently short array."""
        path = self.path / "subjects" / subject / name
        meta = self.meta(subject)
        shape, dtype = expected_arrays(meta, self.size)[name]
        problem = array_problem(path, shape, dtype, (meta.get("arrays") or {}).get(name))
        if problem:
            raise_damaged([(path, problem)])
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataError(path, f"cannot open cached array ({e}): {REBUILD}") from None

    def geometry(self, subject: str) -> Geometry:
        return Geometry.from_dict(self.meta(subject)["geometry"])

    def arrays(self, subject: str) -> tuple[np.ndarray, np.ndarray]:
        """(image (T, Z, S, S) float16 memmap, labels (L, Z, S, S) uint8 memmap)."""
        return self.image_array(subject), self.label_array(subject)

    def image_array(self, subject: str) -> np.ndarray:
        """The image memmap alone: reading unlabeled slices never opens a label file."""
        if subject not in self._images:
            self._images[subject] = self._open(subject, "image.npy")
        return self._images[subject]

    def label_array(self, subject: str) -> np.ndarray:
        if subject not in self._labels:
            self._labels[subject] = self._open(subject, "labels.npy")
        return self._labels[subject]

    def native_labels(self, subject: str) -> dict[int, np.ndarray]:
        """Labeled frame t -> (X, Y, Z) uint8 labels on the subject's native grid."""
        arr = self._open(subject, "native_labels.npy")
        return {t: np.asarray(arr[i]) for i, t in enumerate(self.meta(subject)["label_frames"])}

    def image(self, subject: str, frame: int, z: int) -> np.ndarray:
        return np.asarray(self.image_array(subject)[frame, z], dtype=np.float32)

    def label(self, subject: str, label_index: int, z: int) -> np.ndarray:
        return np.asarray(self.label_array(subject)[label_index, z])

    def rows(self, subjects=None, labeled: bool | None = None, phases=None) -> pd.DataFrame:
        """Manifest rows filtered by subject keys, labeled flag and phases ('ED', 'ES', 'unlabeled')."""
        m = self.manifest
        mask = np.ones(len(m), dtype=bool)
        if subjects is not None:
            unknown = set(subjects) - set(self.subjects["subject"])
            if unknown:
                raise DataError(self.path, f"subjects not in this cache: {sorted(unknown)[:5]}")
            mask &= m["subject"].isin(list(subjects)).to_numpy()
        if labeled is not None:
            mask &= (m["labeled"] == labeled).to_numpy()
        if phases is not None:
            mask &= m["phase"].isin(list(phases)).to_numpy()
        return m[mask]
