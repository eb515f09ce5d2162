"""EchoNet-Dynamic (Ouyang et al., Nature 580, 2020): apical four-chamber echo videos + LV tracings.

Layout::

    Videos/<FileName>.avi     112 x 112 px grey-scale (stored as 3 equal channels) cine loops
    FileList.csv              FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split
    VolumeTracings.csv        FileName,X1,Y1,X2,Y2,Frame  (FileName with ``.avi``; Frame 0-based)

One ``Subject`` per video (``view`` "4CH", image (X, Y, 1, T) with X the column and Y the row of a
frame, read with OpenCV as EchoNet's own ``echonet.utils.loadvideo`` does). Without FileList.csv
every ``Videos/*.avi`` is an unlabeled subject.

Tracings -> masks, exactly as the EchoNet repository (echonet/dynamic, ``echonet/datasets/echo.py``,
``Echo.__getitem__``): the rows of one traced frame, in file order, are the long axis (first row)
then the perpendicular chords (x1, y1) - (x2, y2); the outline is
``x = concat(x1[1:], flip(x2[1:]))``, ``y = concat(y1[1:], flip(y2[1:]))``, rounded with
``np.rint`` and filled with ``skimage.draw.polygon(rows=y, cols=x, shape=(H, W))``. As there, the
traced frames of a video are taken in order of first appearance in the CSV: the *last* is the
large (diastolic, ED) trace and the *first* the small (systolic, ES) one; videos with fewer than
two traced frames carry no labels (echo.py drops them from its segmentation set).

No pixel spacing: EchoNet's videos were resized to 112 x 112 px and the files record no physical
size. Spacing is set to a nominal 1 mm per pixel (``extra["nominal_spacing"]``): prepare the cache
with ``--spacing 1 --size 112`` to keep the native grid; areas and "volumes" in mm are *not*
physical. EF, EDV and ESV (from FileList.csv, computed by the dataset's clinicians) are in
``extra``; ``extra["official_split"]`` is the dataset's Split (train / val / test).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from skimage.draw import polygon

from ...errors import DataError
from ..labels import LV
from ..subject import Subject
from .base import READERS, Reader

FILELIST_COLUMNS = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]
TRACING_COLUMNS = ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]


def tracing_mask(rows: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, 4) rows ``X1, Y1, X2, Y2`` of one traced frame -> bool mask (height, width) = (rows, columns).

    EchoNet's rule (echonet/dynamic ``echonet/datasets/echo.py``): drop the first row (the long
    axis), walk the chords' first ends then the second ends backwards, round, fill the polygon.
    """
    rows = np.asarray(rows, dtype=np.float64)
    x = np.concatenate((rows[1:, 0], np.flip(rows[1:, 2])))
    y = np.concatenate((rows[1:, 1], np.flip(rows[1:, 3])))
    r, c = polygon(np.rint(y).astype(int), np.rint(x).astype(int), (height, width))
    mask = np.zeros((height, width), dtype=bool)
    mask[r, c] = True
    return mask


def read_video(path: Path) -> np.ndarray:
    """An AVI -> (T, H, W) float32 grey values 0..255 (OpenCV; colour frames converted to grey)."""
    import cv2  # imported here: only EchoNet needs OpenCV (dependency opencv-python-headless)

    if not path.is_file():
        raise DataError(path, "video not found")
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        if not capture.isOpened():
            raise DataError(path, "OpenCV cannot open the video (not an AVI / unsupported codec?)")
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame)
    finally:
        capture.release()
    if not frames:
        raise DataError(path, "no frame could be decoded (truncated or corrupt video?)")
    return np.stack(frames).astype(np.float32)


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(path, f"cannot read CSV: {e}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(path, f"lacks columns {missing}; has {list(table.columns)}")
    return table


def _stem(name: str) -> str:
    return name[:-4] if name.lower().endswith(".avi") else name


@READERS.register("echonet")
class EchoNetReader(Reader):
    name = "echonet"
    description = "EchoNet-Dynamic: Videos/*.avi, FileList.csv (EF, Split), VolumeTracings.csv (LV tracings)"

    def __init__(self) -> None:
        self._tables: dict[Path, tuple[pd.DataFrame | None, dict[str, list[tuple[int, np.ndarray]]]]] = {}

    def tables(self, root: Path) -> tuple[pd.DataFrame | None, dict[str, list[tuple[int, np.ndarray]]]]:
        """(FileList indexed by file stem or None, stem -> [(frame, (N, 4) rows)] in CSV order); read once per root."""
        root = Path(root)
        if root not in self._tables:
            filelist = None
            if (root / "FileList.csv").is_file():
                filelist = _read_csv(root / "FileList.csv", FILELIST_COLUMNS)
                filelist.index = filelist["FileName"].astype(str).map(_stem)
            traces: dict[str, list[tuple[int, np.ndarray]]] = {}
            if (root / "VolumeTracings.csv").is_file():
                vt = _read_csv(root / "VolumeTracings.csv", TRACING_COLUMNS)
                coords = vt[["X1", "Y1", "X2", "Y2", "Frame"]].apply(pd.to_numeric, errors="coerce").to_numpy()
                if not np.isfinite(coords).all():
                    raise DataError(root / "VolumeTracings.csv", "holds non-numeric or missing coordinates / frames")
                stems = vt["FileName"].astype(str).map(_stem)
                for stem, group in pd.DataFrame(coords).groupby(stems.to_numpy(), sort=False):
                    rows = group.to_numpy()
                    xy, frame = rows[:, :4], rows[:, 4].astype(int)
                    # traced frames in order of first appearance, each with its rows in file order
                    traces[stem] = [(int(f), xy[frame == f]) for f in pd.unique(frame)]
            self._tables[root] = (filelist, traces)
        return self._tables[root]

    def subject_ids(self, root: Path) -> list[str]:
        filelist, _ = self.tables(root)
        if filelist is None:
            return sorted(p.stem for p in (Path(root) / "Videos").glob("*.avi"))
        missing = [s for s in filelist.index if not (Path(root) / "Videos" / f"{s}.avi").is_file()]
        if missing:
            raise DataError(
                Path(root) / "Videos" / f"{missing[0]}.avi",
                f"listed in FileList.csv but not found ({len(missing)} videos missing)",
            )
        return sorted(filelist.index)

    def source_files(self, root: Path, subject_id: str) -> list[Path]:
        files = [root / "Videos" / f"{subject_id}.avi", root / "FileList.csv", root / "VolumeTracings.csv"]
        return [p for p in files if p.is_file()]

    def load(self, root: Path, subject_id: str) -> Subject:
        root = Path(root)
        filelist, traces = self.tables(root)
        path = root / "Videos" / f"{subject_id}.avi"
        video = read_video(path)  # (T, H, W)
        n_t, height, width = video.shape
        extra: dict = {"nominal_spacing": True, "n_frames_decoded": n_t}
        if filelist is not None and subject_id in filelist.index:
            row = filelist.loc[subject_id]
            if (int(row["FrameHeight"]), int(row["FrameWidth"])) != (height, width):
                raise DataError(
                    path,
                    f"frames are {height}x{width} px, FileList.csv says "
                    f"{int(row['FrameHeight'])}x{int(row['FrameWidth'])}",
                )
            extra.update({k: float(row[k]) for k in ("EF", "ESV", "EDV", "FPS")})
            extra["NumberOfFrames"] = int(row["NumberOfFrames"])
            extra["official_split"] = str(row["Split"]).strip().lower()
        traced = traces.get(subject_id, [])
        extra["traced_frames"] = len(traced)
        labels, ed, es = {}, None, None
        if len(traced) >= 2:
            (es, small), (ed, large) = traced[0], traced[-1]
            for t, rows in ((es, small), (ed, large)):
                if not 0 <= t < n_t:
                    raise DataError(
                        root / "VolumeTracings.csv",
                        f"{subject_id}: traced frame {t} is outside the video's {n_t} frames",
                    )
                if len(rows) < 3:
                    raise DataError(
                        root / "VolumeTracings.csv",
                        f"{subject_id} frame {t}: {len(rows)} rows; need the long axis and >= 2 chords",
                    )
                lab = np.zeros((width, height, 1), dtype=np.uint8)
                lab[tracing_mask(rows, height, width).T, 0] = LV
                labels[t] = lab
        return Subject(
            subject_id=subject_id,
            dataset="echonet",
            image=np.ascontiguousarray(video.transpose(2, 1, 0))[:, :, None, :],
            spacing=(1.0, 1.0, 1.0),
            affine=np.eye(4),
            labels=labels,
            ed_frame=ed,
            es_frame=es,
            vendor=None,
            centre="Stanford",
            view="4CH",
            source=str(path),
            extra=extra,
        )
