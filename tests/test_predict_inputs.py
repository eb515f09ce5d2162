"""``predict`` on every input a researcher has: NRRD / MetaImage on their own grid, DICOM folders with several
series (``--series``), and label files in the user's convention (``--labels``).

The network is an untrained tiny U-Net (geometry and plumbing tests), or an oracle ``Segmenter`` that returns
known internal labels (convention tests). Real data (skipped when absent): ACDC, Bernard et al., IEEE TMI 2018.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cardiossp.config import TrainConfig, load_config, save_run_config
from cardiossp.data.labels import output_convention
from cardiossp.data.readers import get_reader
from cardiossp.data.readers.itk import read_itk_image
from cardiossp.errors import ConfigError, DataError
from cardiossp.inference import Segmenter
from cardiossp.predict import predict_files
from cardiossp.train.segmentation import SegmentationModule
from tests.corpus.harness import assert_clean_failure, invoke

TINY = {"model.n_stages": 3, "model.base_features": 4, "model.max_features": 16}
ROTATION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z: the geometry is not the identity


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with an untrained tiny network on a 1.5 mm / 32 px grid (cache.json only: no slices)."""
    root = tmp_path_factory.mktemp("predict_inputs")
    (root / "cache").mkdir()
    (root / "cache" / "cache.json").write_text(json.dumps({"spacing": 1.5, "size": 32}))
    cfg = load_config(TrainConfig, "train", "tiny", TINY)
    torch.manual_seed(0)
    module = SegmentationModule(cfg)
    (root / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()},
               root / "run" / "checkpoints" / "last.ckpt")
    save_run_config(cfg, root / "run", cache=str(root / "cache"))
    return root / "run"


@pytest.fixture(scope="module")
def seg(run):
    return Segmenter.from_checkpoint(run)


def volume(shape, seed=0) -> np.ndarray:
    """A smooth (X, Y, Z[, T]) image with a bright disc: something for the network to respond to."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disc = ((x - shape[0] * 0.4) ** 2 + (y - shape[1] * 0.55) ** 2 < (min(shape[:2]) / 4) ** 2) * 300.0
    img = disc[(...,) + (None,) * (len(shape) - 2)] + rng.normal(100, 20, shape)
    return img.astype(np.float32)


def write_itk(path, data_xyz, spacing, origin, direction):
    zyx = np.ascontiguousarray(data_xyz.transpose(tuple(range(data_xyz.ndim))[::-1]))
    img = sitk.GetImageFromArray(zyx, isVector=False)  # a 4D array is a 4D image, not 3D vectors
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path), useCompression=True)
    return img


def itk_labels(path) -> np.ndarray:
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return arr.transpose(tuple(range(arr.ndim))[::-1])


# ---------------------------------------------------------------- NRRD / MetaImage on the input's grid
@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_itk_input_round_trip_lies_on_the_input_grid(seg, tmp_path, ext):
    data = volume((40, 36, 3))
    src = tmp_path / f"vol{ext}"
    ref = write_itk(src, data, (1.4, 1.3, 8.0), (12.5, -30.0, 4.0), ROTATION)
    (out,) = predict_files(seg, [src], tmp_path / "out")
    assert out.name == f"vol_seg{ext}"
    res = sitk.ReadImage(str(out))
    assert res.GetSize() == ref.GetSize() and res.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(res.GetSpacing(), ref.GetSpacing())
    np.testing.assert_allclose(res.GetOrigin(), ref.GetOrigin())
    np.testing.assert_allclose(res.GetDirection(), ref.GetDirection())
    assert res.GetMetaData("cardiossp_labels") == "cardiossp labels (internal) 0 bg 1 LV 2 MYO 3 RV"
    # the labels are the network's prediction of this image, voxel for voxel
    image, spacing, affine, _ = read_itk_image(src)
    np.testing.assert_array_equal(image, data)
    np.testing.assert_array_equal(itk_labels(out), seg(image, spacing, affine))


def test_itk_geometry_matches_the_same_image_as_nifti(seg, tmp_path):
    """SimpleITK writes the NRRD's geometry into a NIfTI as RAS+; nibabel's affine of it must equal ours, and the
    two files must give the same prediction voxel for voxel (no axis swapped on the way in or out)."""
    data = volume((30, 34, 2), seed=1)
    write_itk(tmp_path / "a.nrrd", data, (1.25, 1.5, 9.0), (5.0, 6.0, -7.0), ROTATION)
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "a.nrrd")), str(tmp_path / "b.nii.gz"))
    _, _, affine, _ = read_itk_image(tmp_path / "a.nrrd")
    np.testing.assert_allclose(affine, nib.load(tmp_path / "b.nii.gz").affine, atol=1e-4)
    out_nrrd, out_nii = predict_files(seg, [tmp_path / "a.nrrd", tmp_path / "b.nii.gz"], tmp_path / "out")
    np.testing.assert_array_equal(itk_labels(out_nrrd), np.asarray(nib.load(out_nii).dataobj))


def test_4d_mhd_cine_gives_a_4d_mha_on_its_grid(seg, tmp_path):
    data = volume((32, 30, 2, 3), seed=2)
    src = tmp_path / "cine.mhd"
    ref = write_itk(src, data, (1.5, 1.5, 10.0, 33.0), (1.0, 2.0, 3.0, 0.0), tuple(np.eye(4).ravel()))
    assert (tmp_path / "cine.zraw").exists() or (tmp_path / "cine.raw").exists()  # a two-file MetaImage
    (out,) = predict_files(seg, [tmp_path], tmp_path / "out")  # a folder: the .mhd, not its data file
    assert out.name == "cine_seg.mha"
    res = sitk.ReadImage(str(out))
    assert res.GetSize() == ref.GetSize() == (32, 30, 2, 3)
    np.testing.assert_allclose(res.GetSpacing(), ref.GetSpacing())
    image, spacing, affine, _ = read_itk_image(src)
    assert image.shape == (32, 30, 2, 3) and spacing == (1.5, 1.5, 10.0)
    np.testing.assert_array_equal(image, data)  # frames stay frames (the 4th ITK axis is T)
    np.testing.assert_array_equal(itk_labels(out), seg(data, spacing, affine))


def test_nrrd_header_claiming_more_than_the_file_is_refused_before_reading(run, tmp_path):
    bad = tmp_path / "lying.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4000 4000 100\nspacings: 1 1 8\n"
                    b"encoding: raw\nendian: little\n\n" + b"\0" * 4096)
    out = tmp_path / "out"
    line = assert_clean_failure(invoke("predict", bad, "--model", run, "--out", out), "lying.nrrd", "header claims",
                                "4000 x 4000 x 100", "4,096 bytes")
    assert "Traceback" not in line and not (out / "lying_seg.nrrd").exists()
    gz = tmp_path / "lying_gz.mha"  # compressed data cannot expand beyond deflate's ratio
    gz.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4000 4000 100\nElementType = MET_FLOAT\n"
                   b"ElementSpacing = 1 1 8\nCompressedData = True\nElementDataFile = LOCAL\n" + b"x" * 100)
    with pytest.raises(DataError, match="1032:1") as e:
        read_itk_image(gz)
    assert e.value.path == gz


def test_formats_predict_does_not_read_are_named(run, tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    assert_clean_failure(invoke("predict", tmp_path / "x.png", "--model", run, "--out", tmp_path / "o"),
                         "x.png", "not an image format", ".nrrd", ".mha")


# ---------------------------------------------------------------- DICOM folders with several series
def write_dicom_series(folder, uid, description, n_slices, n_phases, seed=0, first_number=1):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    number = first_number
    for z in range(n_slices):
        for t in range(n_phases):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "MR", uid, description
            ds.InstanceNumber, ds.TriggerTime = number, 40.0 * t
            ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 24, 20, 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 8.0 * z], [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing, ds.SliceThickness = [1.5, 1.5], 8.0
            ds.PixelData = rng.integers(0, 800, 24 * 20, dtype=np.uint16).tobytes()
            ds.save_as(folder / f"IM-0001-{number:04d}.dcm", enforce_file_format=True)
            number += 1


@pytest.fixture
def two_series(tmp_path):
    folder = tmp_path / "exam"
    write_dicom_series(folder, "1.2.826.0.1.3680043.10.1", "SA cine", n_slices=2, n_phases=3)
    write_dicom_series(folder, "1.2.826.0.1.3680043.10.2", "localizer", n_slices=1, n_phases=1, first_number=50)
    return folder


def test_a_dicom_folder_with_two_series_is_refused_listing_both(run, two_series, tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(invoke("predict", two_series, "--model", run, "--out", out), "exam", "holds 2 DICOM series",
                         "--series UID", '1.2.826.0.1.3680043.10.1 "SA cine" (6 images)',
                         '1.2.826.0.1.3680043.10.2 "localizer" (1 image)')
    assert not out.exists() or not any(out.iterdir())


def test_series_picks_one_of_them(run, seg, two_series, tmp_path):
    from cardiossp.data.readers.sunnybrook import read_series

    r = invoke("predict", two_series, "--model", run, "--out", tmp_path / "cine", "--series",
               "1.2.826.0.1.3680043.10.1")
    assert r.exit_code == 0, r.output
    res = nib.load(tmp_path / "cine" / "exam_seg.nii.gz")
    image, affine, _, info = read_series(two_series, series="1.2.826.0.1.3680043.10.1")
    assert res.shape == image.shape == (20, 24, 2, 3) and info["series_description"] == "SA cine"
    np.testing.assert_allclose(res.affine, affine, atol=1e-4)
    spacing = [float(np.linalg.norm(affine[:3, i])) for i in range(3)]
    np.testing.assert_array_equal(np.asarray(res.dataobj), seg(image, spacing, affine))
    (loc,) = predict_files(seg, [two_series], tmp_path / "loc", series="1.2.826.0.1.3680043.10.2")
    assert nib.load(loc).shape == (20, 24, 1)
    with pytest.raises(DataError, match=r"has no DICOM series '9\.9'.*SA cine"):
        predict_files(seg, [two_series], tmp_path / "none", series="9.9")
    nib.save(nib.Nifti1Image(volume((20, 24, 2)), np.eye(4)), tmp_path / "plain.nii.gz")
    with pytest.raises(ConfigError, match="no input is a DICOM folder"):
        predict_files(seg, [tmp_path / "plain.nii.gz"], tmp_path / "x", series="9.9")
    # the Sunnybrook reader keeps taking the largest series of a training folder, and says how many it ignored
    _, _, _, info = read_series(two_series)
    assert info["series_ignored"] == 1 and info["series_uid"] == "1.2.826.0.1.3680043.10.1"


# ---------------------------------------------------------------- label conventions
class Oracle(Segmenter):
    """Returns given internal labels: what a perfect network would predict."""

    def __init__(self, labels):  # noqa: D107 - no network
        self.labels = labels

    def __call__(self, image, spacing, affine=None, tta=None, largest_component=None):
        assert image.shape == self.labels.shape
        return self.labels


def acdc_layout(root):
    """One ACDC patient in the original layout with ACDC labels (1 RV, 2 MYO, 3 LV), two frames."""
    folder = root / "patient001"
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text("ED: 1\nES: 2\nGroup: NOR\nHeight: 180\nWeight: 80\nNbFrame: 2\n")
    affine = np.diag([1.4, 1.4, 10.0, 1.0])
    x, y = np.meshgrid(np.arange(32), np.arange(28), indexing="ij")
    gt = np.zeros((32, 28, 3), np.uint8)
    r = np.hypot(x - 12, y - 14)[..., None].repeat(3, axis=2)
    gt[r < 8] = 2  # MYO ring
    gt[r < 5] = 3  # LV inside (ACDC 3)
    gt[(np.abs(x - 24) < 4)[..., None].repeat(3, axis=2) & (np.abs(y - 14) < 6)[..., None]] = 1  # RV (ACDC 1)
    for n in (1, 2):
        image = volume((32, 28, 3), seed=n) + gt * 50
        nib.save(nib.Nifti1Image(image, affine), folder / f"patient001_frame{n:02d}.nii.gz")
        nib.save(nib.Nifti1Image(gt, affine), folder / f"patient001_frame{n:02d}_gt.nii.gz")
    return folder


def test_labels_acdc_gives_acdcs_own_convention(tmp_path):
    """ACDC file -> reader (ACDC -> internal) -> a perfect prediction -> --labels acdc: the ground truth file again."""
    folder = acdc_layout(tmp_path / "acdc")
    subject = get_reader("acdc").load(tmp_path / "acdc", "patient001")
    internal = subject.labels[subject.ed_frame]
    gt_file = folder / "patient001_frame01_gt.nii.gz"
    gt = np.asarray(nib.load(gt_file).dataobj)
    assert set(np.unique(gt)) == {0, 1, 2, 3}
    (acdc,) = predict_files(Oracle(internal), [folder / "patient001_frame01.nii.gz"], tmp_path / "acdc_out",
                            labels="acdc")
    np.testing.assert_array_equal(np.asarray(nib.load(acdc).dataobj), gt)
    assert nib.load(acdc).header["descrip"].tobytes().rstrip(b"\0") == b"cardiossp labels (acdc) 0 bg 1 RV 2 MYO 3 LV"
    (plain,) = predict_files(Oracle(internal), [folder / "patient001_frame01.nii.gz"], tmp_path / "internal_out")
    written = np.asarray(nib.load(plain).dataobj)
    assert (written[gt == 3] == 1).all() and (written[gt == 1] == 3).all()  # internal: LV and RV swapped vs ACDC


def test_labels_acdc_on_the_real_acdc_sample(acdc_root, tmp_path):
    subject = get_reader("acdc").load(acdc_root, "patient001")
    frame = subject.frame_numbers[subject.ed_frame] + 1
    (out,) = predict_files(Oracle(subject.labels[subject.ed_frame]),
                           [acdc_root / "patient001" / f"patient001_frame{frame:02d}.nii.gz"], tmp_path, labels="acdc")
    gt = np.asarray(nib.load(acdc_root / "patient001" / f"patient001_frame{frame:02d}_gt.nii.gz").dataobj)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), gt)


def test_labels_option_maps_the_network_output(run, tmp_path):
    folder = acdc_layout(tmp_path / "acdc")
    src = folder / "patient001_frame01.nii.gz"
    outs = {}
    for name in ("internal", "acdc", "mnms"):
        r = invoke("predict", src, "--model", run, "--out", tmp_path / name, "--labels", name)
        assert r.exit_code == 0, r.output
        outs[name] = np.asarray(nib.load(tmp_path / name / "patient001_frame01_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(outs["acdc"], np.array([0, 3, 2, 1], np.uint8)[outs["internal"]])
    np.testing.assert_array_equal(outs["mnms"], outs["internal"])
    (tmp_path / "map.yaml").write_text("LV: 10\nMYO: 20\nRV: 30\n")
    r = invoke("predict", src, "--model", run, "--out", tmp_path / "mapped", "--labels", tmp_path / "map.yaml")
    assert r.exit_code == 0, r.output
    img = nib.load(tmp_path / "mapped" / "patient001_frame01_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.array([0, 10, 20, 30], np.uint8)[outs["internal"]])
    assert img.header["descrip"].tobytes().rstrip(b"\0") == b"cardiossp labels (map.yaml) 0 bg 10 LV 20 MYO 30 RV"
    assert float(img.header["cal_max"]) == 30


def test_bad_label_conventions_are_one_line_errors(run, tmp_path):
    folder = acdc_layout(tmp_path / "acdc")
    src = folder / "patient001_frame01.nii.gz"
    assert_clean_failure(invoke("predict", src, "--model", run, "--out", tmp_path / "o", "--labels", "sunnybrook"),
                         "--labels 'sunnybrook'", "internal, acdc, mnms, mnms2")
    (tmp_path / "twice.yaml").write_text("LV: 1\nMYO: 1\nRV: 3\n")
    assert_clean_failure(invoke("predict", src, "--model", run, "--out", tmp_path / "o", "--labels",
                                tmp_path / "twice.yaml"), "twice.yaml", "same value")
    (tmp_path / "partial.yaml").write_text("LV: 1\nMYO: 2\n")
    with pytest.raises(DataError, match="no value for RV"):
        output_convention(tmp_path / "partial.yaml")
    (tmp_path / "aorta.yaml").write_text("LV: 1\nMYO: 2\nRV: 3\naorta: 4\n")
    with pytest.raises(DataError, match="unknown class 'aorta'"):
        output_convention(tmp_path / "aorta.yaml")
    assert not (tmp_path / "o").exists()
