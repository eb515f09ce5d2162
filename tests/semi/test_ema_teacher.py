"""``--ema-teacher``: evaluate or pseudo-label with a mean-teacher / bcp run's EMA teacher instead of its student."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from cardiossp.checkpoints import EMA_TEACHER_PREFIX, resolve_checkpoint
from cardiossp.cli import app
from cardiossp.config import TrainConfig, load_config
from cardiossp.errors import CheckpointError
from cardiossp.evaluate.run import evaluate_run
from cardiossp.inference import Segmenter
from cardiossp.train.fit import train_segmentation


@pytest.fixture(scope="module")
def mean_teacher_run(tmp_path_factory, phantom_cache):
    cache, split = phantom_cache
    cfg = load_config(TrainConfig, "train", "tiny", {"semi.method": "mean-teacher", "labeled_subjects": 2,
                                                      "schedule.epochs": 1, "schedule.iters_per_epoch": 3,
                                                      "data.batch_size": 4})
    return train_segmentation(cfg, cache, split, tmp_path_factory.mktemp("mt") / "run", progress=False)


def test_ema_teacher_loads_the_teachers_weights(mean_teacher_run):
    state = torch.load(resolve_checkpoint(mean_teacher_run), map_location="cpu", weights_only=True)["state_dict"]
    student = Segmenter.from_checkpoint(mean_teacher_run).model.state_dict()
    teacher = Segmenter.from_checkpoint(mean_teacher_run, ema_teacher=True).model.state_dict()
    assert student.keys() == teacher.keys()
    for k in teacher:
        assert torch.equal(teacher[k], state[EMA_TEACHER_PREFIX + k]) and torch.equal(student[k], state["model." + k])
    floats = [k for k in teacher if teacher[k].is_floating_point()]
    assert any(not torch.equal(teacher[k], student[k]) for k in floats)  # three EMA steps: not the student


def test_ema_teacher_evaluation_keeps_its_own_tables(mean_teacher_run):
    s = evaluate_run(mean_teacher_run, subset="test", ema_teacher=True)
    assert s["ema_teacher"] is True and (mean_teacher_run / "eval" / "test-ema" / "summary.json").is_file()
    assert not (mean_teacher_run / "eval" / "test").exists()


def test_a_run_without_a_teacher_is_one_clear_line(teacher):
    with pytest.raises(CheckpointError, match="no EMA teacher"):
        Segmenter.from_checkpoint(teacher, ema_teacher=True)
    r = CliRunner().invoke(app, ["evaluate", "--run", str(teacher), "--ema-teacher", "--device", "cpu"])
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "no EMA teacher" in r.output


def test_pseudo_labels_of_the_ema_teacher_are_recorded_as_such(tmp_path, phantom_cache, mean_teacher_run):
    from cardiossp.data.pseudo import read_record
    from cardiossp.errors import DataError
    from cardiossp.pseudo_label import pseudo_label

    cache, split = phantom_cache
    out = pseudo_label(mean_teacher_run, cache, split, tmp_path / "pl", tta=False, device="cpu", ema_teacher=True)
    assert read_record(out)["ema_teacher"] is True
    with pytest.raises(DataError, match="another teacher"):  # the student's labels do not go into this store
        pseudo_label(mean_teacher_run, cache, split, out, tta=False, device="cpu")
