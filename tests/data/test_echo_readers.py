"""CAMUS and EchoNet-Dynamic readers on fixtures written in the datasets' own formats.

No echo data is available here: CAMUS fixtures are MetaImage ``.mhd`` + ``.raw`` files written with
SimpleITK (plus ``Info_{2CH,4CH}.cfg``), EchoNet fixtures are AVI videos written with OpenCV plus
``FileList.csv`` and ``VolumeTracings.csv`` with the datasets' columns. Sources: CAMUS, Leclerc et al.,
IEEE TMI 38(9) 2019; EchoNet-Dynamic, Ouyang et al., Nature 580, 2020 (tracing rule: echonet/dynamic,
``echonet/datasets/echo.py``).
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from skimage.draw import polygon

from cardiossp.data.budgets import training_subjects
from cardiossp.data.cache import prepare
from cardiossp.data.datasets import LabeledSlices
from cardiossp.data.readers import get_reader
from cardiossp.data.readers.echonet import tracing_mask
from cardiossp.data.slices import SliceCache
from cardiossp.data.splits import load_split, make_split, save_split
from cardiossp.errors import DataError

# ------------------------------------------------------------------ CAMUS fixtures
H, W = 30, 40  # CAMUS frames are (rows = depth, columns); small here
CAMUS_SPACING = (0.5, 0.4)  # ElementSpacing x, y (mm)


def camus_frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W)).astype(np.uint8)


def camus_gt(shift: int = 0) -> np.ndarray:
    """(H, W) CAMUS labels: 1 LV endocardium, 2 myocardium, 3 left atrium (below the LV)."""
    gt = np.zeros((H, W), np.uint8)
    gt[4:16, 12 + shift : 26 + shift] = 2
    gt[6:14, 15 + shift : 23 + shift] = 1
    gt[17:26, 13:27] = 3
    return gt


def write_itk(path, array: np.ndarray, spacing) -> None:
    img = sitk.GetImageFromArray(array)  # (Y, X) -> 2D image, (T, Y, X) -> 3D
    img.SetSpacing(tuple(spacing) + (1.0,) * (img.GetDimension() - len(spacing)))
    sitk.WriteImage(img, str(path))


def write_camus_patient(
    root,
    pid: str,
    sequence: int = 0,
    ed: int = 1,
    es: int = 4,
    ext: str = ".mhd",
    seq_name: str = "sequence",
    views=("2CH", "4CH"),
    nb_frame: int | None = None,
):
    """One patient folder; ``sequence`` > 0 also writes the half-cycle cine of that many frames."""
    folder = root / pid
    folder.mkdir(parents=True)
    seed = int(pid[-4:])
    for v, view in enumerate(views):
        frames = np.stack([camus_frame(seed * 100 + 10 * v + t) for t in range(max(sequence, es))])
        info = (
            f"ED: {ed}\nES: {es}\nNbFrame: {nb_frame or len(frames)}\nSex: F\nAge: {40 + seed}\n"
            f"ImageQuality: Good\nLVedv: 90.5\nLVesv: 40.25\nLVef: 55.5\n"
        )
        (folder / f"Info_{view}.cfg").write_text(info)
        for phase, t, shift in (("ED", ed - 1, 0), ("ES", es - 1, 2)):
            write_itk(folder / f"{pid}_{view}_{phase}{ext}", frames[t], CAMUS_SPACING)
            write_itk(folder / f"{pid}_{view}_{phase}_gt{ext}", camus_gt(shift), CAMUS_SPACING)
        if sequence:
            write_itk(folder / f"{pid}_{view}_{seq_name}{ext}", frames[:sequence], CAMUS_SPACING)
    return folder


def test_camus_fixture_is_genuine_metaimage(tmp_path):
    folder = write_camus_patient(tmp_path, "patient0001", sequence=5)
    header = (folder / "patient0001_2CH_ED.mhd").read_text()
    assert "ElementSpacing = 0.5 0.4" in header and "ElementDataFile = patient0001_2CH_ED.raw" in header
    assert (folder / "patient0001_2CH_ED.raw").stat().st_size == H * W  # uint8, uncompressed
    assert "DimSize = 40 30 5" in (folder / "patient0001_2CH_sequence.mhd").read_text()


@pytest.mark.parametrize("ext", [".mhd", ".nii.gz"])
def test_camus_round_trip_without_cine(tmp_path, ext):
    write_camus_patient(tmp_path / "training", "patient0007", ed=2, es=5, ext=ext)
    reader = get_reader("camus")
    assert reader.subject_ids(tmp_path) == [
        "training/patient0007/patient0007_2CH",
        "training/patient0007/patient0007_4CH",
    ]
    s = reader.load(tmp_path, "training/patient0007/patient0007_4CH")
    assert s.shape == (W, H, 1, 2) and s.view == "4CH" and s.subject_id == "patient0007_4CH"
    assert s.spacing == pytest.approx((0.5, 0.4, 1.0))
    assert (s.ed_frame, s.es_frame, s.frame_numbers) == (0, 1, [1, 4])
    frames = np.stack([camus_frame(7 * 100 + 10 + t) for t in range(5)])
    np.testing.assert_array_equal(s.image[:, :, 0, 0], frames[1].T)  # X = column, Y = row
    np.testing.assert_array_equal(s.image[:, :, 0, 1], frames[4].T)
    for t, shift in ((0, 0), (1, 2)):
        raw = camus_gt(shift).T
        expected = np.choose(raw, [0, 1, 2, 0])  # LV 1, MYO 2, left atrium -> background
        np.testing.assert_array_equal(s.labels[t][:, :, 0], expected)
        np.testing.assert_array_equal(s.extra["left_atrium"][t][:, :, 0], raw == 3)
    assert s.extra["patient"] == "patient0007" and s.extra["ImageQuality"] == "Good"
    assert (s.extra["Age"], s.extra["LVef"], s.extra["NbFrame"]) == (47.0, 55.5, 5)
    assert min(p.name for p in reader.source_files(tmp_path, "training/patient0007/patient0007_4CH")) == "Info_4CH.cfg"


@pytest.mark.parametrize(("ext", "seq_name"), [(".mhd", "sequence"), (".nii.gz", "half_sequence")])
def test_camus_cine_holds_every_frame_with_labels_at_ed_and_es(tmp_path, ext, seq_name):
    write_camus_patient(tmp_path, "patient0003", sequence=6, ed=1, es=5, ext=ext, seq_name=seq_name)
    s = get_reader("camus").load(tmp_path, "patient0003/patient0003_2CH")
    assert s.shape == (W, H, 1, 6) and (s.ed_frame, s.es_frame) == (0, 4) and sorted(s.labels) == [0, 4]
    frames = np.stack([camus_frame(300 + t) for t in range(6)])
    np.testing.assert_array_equal(s.image[..., 0, :], frames.transpose(2, 1, 0))
    assert (s.labels[4] == 2).sum() == (camus_gt(2) == 2).sum()


def test_camus_errors_name_the_file(tmp_path):
    folder = write_camus_patient(tmp_path, "patient0001", sequence=5, nb_frame=7)
    reader = get_reader("camus")
    with pytest.raises(DataError, match="patient0001_2CH_sequence.mhd.*NbFrame 7"):
        reader.load(tmp_path, "patient0001/patient0001_2CH")
    folder = write_camus_patient(tmp_path, "patient0002")
    write_itk(folder / "patient0002_2CH_ES_gt.mhd", np.zeros((H, W + 1), np.uint8), CAMUS_SPACING)
    with pytest.raises(DataError, match="patient0002_2CH_ES_gt.mhd.*does not match"):
        reader.load(tmp_path, "patient0002/patient0002_2CH")
    (folder / "patient0002_4CH_ED.raw").unlink()
    with pytest.raises(DataError, match="patient0002_4CH_ED.mhd.*cannot read"):
        reader.load(tmp_path, "patient0002/patient0002_4CH")
    write_itk(folder / "patient0002_4CH_ED.mhd", camus_frame(0), CAMUS_SPACING)
    write_itk(folder / "patient0002_4CH_ED_gt.mhd", np.full((H, W), 5, np.uint8), CAMUS_SPACING)
    with pytest.raises(DataError, match="label values \\[5\\]"):
        reader.load(tmp_path, "patient0002/patient0002_4CH")


# ------------------------------------------------------------------ EchoNet fixtures
SIDE = 112  # EchoNet-Dynamic videos are 112 x 112 px


def echo_frames(seed: int, n: int = 12) -> np.ndarray:
    """(T, H, W) uint8 smooth, asymmetric frames (MJPG keeps them within a few grey levels)."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    return np.stack(
        [np.clip(90 + 60 * np.sin(xx / 9 + t + seed) + 30 * np.cos(yy / 17) + xx / 4, 0, 255) for t in range(n)]
    ).astype(np.uint8)


def write_avi(path, frames: np.ndarray, codec: str = "MJPG", fps: int = 50) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (frames.shape[2], frames.shape[1]))
    assert writer.isOpened(), f"OpenCV cannot write {codec}"
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()


def trace_rows(name: str, frame: int, x: tuple[float, float], y: tuple[float, float], n_chords: int = 12) -> list:
    """VolumeTracings rows of a box-shaped LV: first the long axis (running *beyond* the box, so that using it
    would change the mask), then horizontal chords from the left border (X1, Y1) to the right one (X2, Y2)."""
    cx = (x[0] + x[1]) / 2
    rows = [(name, cx, y[0] - 8, cx, y[1] + 8, frame)]
    rows += [(name, x[0], yi, x[1], yi, frame) for yi in np.linspace(y[0], y[1], n_chords)]
    return rows


SMALL, LARGE = ((44.4, 66.6), (36.0, 78.0)), ((30.4, 81.6), (22.0, 90.0))  # (x range, y range), ES / ED


def write_echonet(root, n: int = 10, codec: str = "MJPG", untraced: tuple[str, ...] = ("V09",)):
    """``n`` videos V00.. (splits TRAIN x6, VAL x2, TEST x2); ES traced at frame 3, ED at frame 9 (ES rows first)."""
    (root / "Videos").mkdir(parents=True)
    splits = ["TRAIN"] * 6 + ["VAL"] * 2 + ["TEST"] * 2
    files, traces = [], []
    for i in range(n):
        name = f"V{i:02d}"
        write_avi(root / "Videos" / f"{name}.avi", echo_frames(i), codec)
        files.append((name, 55.0 + i, 40.0, 90.0, SIDE, SIDE, 50, 12, splits[i % len(splits)]))
        if name not in untraced:
            traces += trace_rows(f"{name}.avi", 3, *SMALL) + trace_rows(f"{name}.avi", 9, *LARGE)
    pd.DataFrame(
        files, columns=["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]
    ).to_csv(root / "FileList.csv", index=False)
    pd.DataFrame(traces, columns=["FileName", "X1", "Y1", "X2", "Y2", "Frame"]).to_csv(
        root / "VolumeTracings.csv", index=False
    )
    return root


def echonet_reference_mask(rows: np.ndarray) -> np.ndarray:
    """echonet/dynamic echo.py, Echo.__getitem__ (LargeTrace/SmallTrace), verbatim up to names: (H, W)."""
    x1, y1, x2, y2 = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    x = np.concatenate((x1[1:], np.flip(x2[1:])))
    y = np.concatenate((y1[1:], np.flip(y2[1:])))
    r, c = polygon(np.rint(y).astype(int), np.rint(x).astype(int), (SIDE, SIDE))
    mask = np.zeros((SIDE, SIDE), np.float32)
    mask[r, c] = 1
    return mask


def test_tracings_become_the_echonet_mask():
    rows = np.array([r[1:5] for r in trace_rows("v", 0, *LARGE)], dtype=float)
    mask = tracing_mask(rows, SIDE, SIDE)
    np.testing.assert_array_equal(mask, echonet_reference_mask(rows) == 1)
    # geometry: the box x 30..82 (rint of 30.4, 81.6), y 22..90; the long axis (y 14..98) is not part of it
    rr, cc = np.nonzero(mask)
    assert (rr.min(), rr.max()) in {(22, 90), (22, 89), (23, 90), (23, 89)}
    assert (cc.min(), cc.max()) in {(30, 82), (30, 81), (31, 82), (31, 81)}
    assert mask[23:89, 31:81].all() and mask.sum() <= 69 * 53


@pytest.mark.parametrize(("codec", "max_err", "mean_err"), [("FFV1", 0, 0), ("MJPG", 16, 2.0)])
def test_echonet_round_trip(tmp_path, codec, max_err, mean_err):
    root = write_echonet(tmp_path, n=3, codec=codec, untraced=("V02",))
    reader = get_reader("echonet")
    assert reader.subject_ids(root) == ["V00", "V01", "V02"]
    s = reader.load(root, "V01")
    assert s.shape == (SIDE, SIDE, 1, 12) and s.view == "4CH" and s.spacing == (1.0, 1.0, 1.0)
    err = np.abs(s.image[:, :, 0, :] - echo_frames(1).transpose(2, 1, 0).astype(np.float32))
    assert err.max() <= max_err and err.mean() <= mean_err  # X = column, Y = row
    assert (s.es_frame, s.ed_frame) == (3, 9) and sorted(s.labels) == [3, 9]  # first traced = ES, last = ED
    for t, box in ((3, SMALL), (9, LARGE)):
        rows = np.array([r[1:5] for r in trace_rows("v", t, *box)], dtype=float)
        np.testing.assert_array_equal(s.labels[t][:, :, 0], (echonet_reference_mask(rows) == 1).T.astype(np.uint8))
    assert (s.labels[9] == 1).sum() > (s.labels[3] == 1).sum()  # ED is the large trace
    assert s.extra["EF"] == 56.0 and s.extra["official_split"] == "train" and s.extra["nominal_spacing"]
    unlabeled = reader.load(root, "V02")
    assert not unlabeled.labels and unlabeled.ed_frame is None and unlabeled.extra["traced_frames"] == 0


def test_echonet_errors_and_videos_without_filelist(tmp_path):
    root = write_echonet(tmp_path / "a", n=2)
    vt = pd.read_csv(root / "VolumeTracings.csv")
    vt.loc[vt.FileName == "V01.avi", "Frame"] = vt.loc[vt.FileName == "V01.avi", "Frame"].replace(9, 40)
    vt.to_csv(root / "VolumeTracings.csv", index=False)
    with pytest.raises(DataError, match="VolumeTracings.csv.*V01: traced frame 40 is outside the video's 12 frames"):
        get_reader("echonet").load(root, "V01")
    (root / "Videos" / "V00.avi").unlink()
    with pytest.raises(DataError, match="V00.avi.*listed in FileList.csv but not found"):
        get_reader("echonet").subject_ids(root)
    (root / "Videos" / "V00.avi").write_bytes(b"not a video")
    with pytest.raises(DataError, match="V00.avi"):
        get_reader("echonet").load(root, "V00")
    root = write_echonet(tmp_path / "b", n=2)
    pd.read_csv(root / "FileList.csv").drop(columns="Split").to_csv(root / "FileList.csv", index=False)
    with pytest.raises(DataError, match="FileList.csv.*lacks columns \\['Split'\\]"):
        get_reader("echonet").subject_ids(root)
    (root / "FileList.csv").unlink()
    (root / "VolumeTracings.csv").unlink()
    s = get_reader("echonet").load(root, get_reader("echonet").subject_ids(root)[0])
    assert not s.labels and s.n_frames == 12


# ------------------------------------------------------------------ cache and splits on echo subjects
def test_camus_cache_and_patient_level_split(tmp_path):
    for i in range(1, 7):
        write_camus_patient(tmp_path / "camus", f"patient{i:04d}", sequence=5 if i % 2 else 0)
    cache = prepare([("camus", tmp_path / "camus")], tmp_path / "cache", spacing=0.5, size=48)
    sc = SliceCache(cache)
    assert len(sc.subjects) == 12 and set(sc.subjects["view"]) == {"2CH", "4CH"}
    assert set(np.unique(sc.arrays("camus_patient0001_2CH")[1])) == {0, 1, 2}  # no LA, no RV
    split = make_split(sc.subjects, seed=1, val=1, test=1, budgets=[0.25, "all"])
    assert split["views"] == ["2CH", "4CH"] and not split["other_views"]
    patient = dict(zip(sc.subjects["subject"], sc.subjects["patient"]))
    parts = {k: {patient[s] for s in split[k]} for k in ("train", "val", "test")}
    assert [len(parts[k]) for k in ("train", "val", "test")] == [4, 1, 1]
    assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
    assert len(split["train"]) == 8 and split["budget_fractions"] == {0.25: 1}
    one = split["budgets"][1]
    assert len(one) == 2 and len({patient[s] for s in one}) == 1 and set(one) < set(split["budgets"][4])
    ds = LabeledSlices(sc, split["train"])
    assert len(ds) == 16 and ds[0]["segmentation"].shape == (1, 48, 48)


def test_echonet_cache_keeps_the_native_grid_and_official_split(tmp_path):
    root = write_echonet(tmp_path / "echonet", n=10)
    cache = prepare([("echonet", root)], tmp_path / "cache", spacing=1.0, size=SIDE)
    sc = SliceCache(cache)
    s = get_reader("echonet").load(root, "V04")
    native = sc.native_labels("echonet_V04")
    assert sorted(native) == [3, 9] and (native[9] == s.labels[9]).all()
    cached = np.asarray(sc.arrays("echonet_V04")[1])  # (L, Z, S, S): the same grid, so the same pixels
    np.testing.assert_array_equal(cached[1, 0], s.labels[9][:, :, 0])
    assert set(sc.rows(subjects=["echonet_V04"], labeled=True)["phase"]) == {"ED", "ES"}
    split = make_split(sc.subjects, official=True, budgets=["5%", 2, "all"])
    assert split["train"] == [f"echonet_V0{i}" for i in range(6)] and split["unlabeled"] == ["echonet_V09"]
    assert split["val"] == ["echonet_V06", "echonet_V07"] and split["test"] == ["echonet_V08"]
    assert split["budget_fractions"] == {0.05: 1} and sorted(split["budgets"]) == [1, 2, 6]
    assert set(split["budgets"][1]) < set(split["budgets"][2]) < set(split["budgets"][6])
    back = load_split(save_split(split, tmp_path / "split.yaml"))
    assert training_subjects(back, 0.05) == training_subjects(back, "5%") == back["budgets"][1]


@pytest.mark.parametrize("reader", ["camus", "echonet"])
def test_empty_folder_is_a_clear_error(tmp_path, reader):
    with pytest.raises(DataError, match=f"no subjects found for reader '{reader}'"):
        prepare([(reader, tmp_path)], tmp_path / "cache")
