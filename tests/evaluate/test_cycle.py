"""Full-cycle analysis: volume curves, ED / ES detection and the files ``analyse`` writes."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cardiossp.analyse import analyse_files, read_phases
from cardiossp.data.labels import LV, MYO, RV
from cardiossp.data.readers.phantom import make_phantom_subject
from cardiossp.errors import DataError
from cardiossp.evaluate.cycle import analyse_cycle, detect_ed_es, volume_curves
from cardiossp.inference import Segmenter
from cardiossp.models import build_model


def _cine_labels(subject) -> np.ndarray:
    return np.stack([subject.labels[t] for t in range(subject.n_frames)], axis=-1)


@pytest.mark.parametrize("index", [0, 1, 2, 5])
def test_phantom_cycle_finds_its_ed_es_and_ef(index):
    s = make_phantom_subject(index, size=64, n_slices=6, n_frames=12, every_frame=True)
    result = analyse_cycle(_cine_labels(s), s.spacing, subject=s.subject_id)
    assert (result.ed, result.es) == (s.ed_frame, s.es_frame) and result.phases_from == "detected"
    # the phantom shrinks the cavity area by (1 - EF) on every slice: EF within 2 points of its target
    assert abs(result.indices["LV_EF"] - 100 * s.extra["ef_target"]) < 2.0
    vox = np.prod(s.spacing) / 1000
    for t in (0, 3, s.es_frame):
        for name, c in (("LV_ml", LV), ("MYO_ml", MYO), ("RV_ml", RV)):
            assert result.curves.loc[t, name] == pytest.approx(np.count_nonzero(s.labels[t] == c) * vox)
    assert result.indices["LV_EDV"] == pytest.approx(result.curves["LV_ml"].max())
    assert result.indices["LV_ESV"] == pytest.approx(result.curves["LV_ml"].min())


def test_given_phases_win_and_bad_ones_are_named():
    s = make_phantom_subject(3, size=48, n_slices=4, n_frames=6, every_frame=True)
    lab = _cine_labels(s)
    r = analyse_cycle(lab, s.spacing, ed=2, es=4, subject="p")
    assert (r.ed, r.es, r.phases_from) == (2, 4, "given")
    assert r.indices["LV_EDV"] == pytest.approx(r.curves.loc[2, "LV_ml"])
    with pytest.raises(DataError, match="ES frame 6 is outside the cine's 6 frames"):
        analyse_cycle(lab, s.spacing, ed=0, es=6, subject="p")
    with pytest.raises(DataError, match="both ED and ES"):
        analyse_cycle(lab, s.spacing, ed=0, subject="p")
    with pytest.raises(DataError, match="no LV"):
        detect_ed_es([0.0, 0.0, 0.0])
    with pytest.raises(DataError, match="same in every frame"):
        detect_ed_es([5.0, 5.0])
    with pytest.raises(DataError, match=r"\(X, Y, Z, T\)"):
        volume_curves(lab[..., 0], s.spacing)


def test_read_phases_table(tmp_path):
    (tmp_path / "ok.csv").write_text("name,ED,ES\ncase1,0,9\n")
    assert read_phases(tmp_path / "ok.csv") == {"case1": (0, 9)}
    (tmp_path / "bad.csv").write_text("name,ED\ncase1,0\n")
    with pytest.raises(DataError, match="missing \\['ES'\\]"):
        read_phases(tmp_path / "bad.csv")


def test_analyse_files_writes_consistent_outputs(tmp_path):
    s = make_phantom_subject(0, size=48, n_slices=3, n_frames=4)
    path = tmp_path / "cine.nii.gz"
    nib.save(nib.Nifti1Image(s.image, s.affine), str(path))
    torch_model = build_model("unet", n_stages=3, base_features=4, max_features=8)
    seg = Segmenter(torch_model, spacing=1.5, size=48)
    (tmp_path / "phases.csv").write_text("name,ED,ES\ncine,0,2\n")
    summary = analyse_files(seg, [path], tmp_path / "out", phases=tmp_path / "phases.csv")
    assert list(summary["subject"]) == ["cine"] and (summary.loc[0, "ED"], summary.loc[0, "ES"]) == (0, 2)
    folder = tmp_path / "out" / "cine"
    labels = np.asarray(nib.load(str(folder / "cine_seg.nii.gz")).dataobj)
    assert labels.shape == s.image.shape
    curves = pd.read_csv(folder / "volumes.csv")
    vox = np.prod(s.spacing) / 1000
    for t in range(4):
        assert curves.loc[t, "LV_ml"] == pytest.approx(np.count_nonzero(labels[..., t] == LV) * vox)
    assert list(curves["phase"].fillna("")) == ["ED", "", "ES", ""]
    assert (folder / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pd.read_csv(tmp_path / "out" / "summary.csv").loc[0, "phases_from"] == "given"


def test_analyse_refuses_a_single_frame(tmp_path):
    s = make_phantom_subject(0, size=48, n_slices=3, n_frames=2)
    path = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(s.image[..., 0], s.affine), str(path))
    seg = Segmenter(build_model("unet", n_stages=3, base_features=4, max_features=8), 1.5, 48)
    with pytest.raises(DataError, match="one.nii.gz.*needs a cine"):
        analyse_files(seg, [path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_analyse_command(tmp_path):
    import torch
    from typer.testing import CliRunner

    from cardiossp.cli import app
    from cardiossp.config import TrainConfig, load_config, save_run_config
    from cardiossp.train.segmentation import SegmentationModule

    cfg = load_config(TrainConfig, "train", "tiny", {"model.n_stages": 3, "model.base_features": 4,
                                                     "model.max_features": 8})
    module = SegmentationModule(cfg)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()},
               tmp_path / "run" / "checkpoints" / "last.ckpt")
    save_run_config(cfg, tmp_path / "run")
    s = make_phantom_subject(1, size=48, n_slices=3, n_frames=3)
    nib.save(nib.Nifti1Image(s.image, s.affine), str(tmp_path / "c.nii.gz"))
    (tmp_path / "ph.csv").write_text("name,ED,ES\nc,0,1\n")
    r = CliRunner().invoke(app, ["analyse", str(tmp_path / "c.nii.gz"), "--model", str(tmp_path / "run"),
                                 "--out", str(tmp_path / "out"), "--phases", str(tmp_path / "ph.csv"),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "c: ED 0, ES 1 (given)" in r.output and (tmp_path / "out" / "c" / "volumes.csv").is_file()
