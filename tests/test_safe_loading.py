"""Safe loading below the CLI: every torch read is ``weights_only=True`` explicitly (Lightning's resume
included), checksums, the top-level handler's one-line messages, and the run time kept across resumes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
import yaml

from cardiossp.cli.common import error_line
from cardiossp.config import TrainConfig, load_config
from cardiossp.errors import CheckpointError, DataError
from cardiossp.models.weights import checksum_path, load_torch_file, save_weights, verify_checksum
from cardiossp.train.fit import train_segmentation
from tests.stop_after import StopAfter

SHORT = {"schedule.epochs": 2, "schedule.iters_per_epoch": 1, "data.batch_size": 2}


class MakesFile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def interrupted(tmp_path, phantom_cache):
    """A tiny segmentation run stopped after epoch 1 of 2 (its last.ckpt is the resume point)."""
    cache, split = phantom_cache
    cfg = load_config(TrainConfig, "train", "tiny", SHORT)
    run = train_segmentation(cfg, cache, split, tmp_path / "run", progress=False, callbacks=[StopAfter(1)])
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "done.json").exists()
    return cfg, cache, split, run


# ------------------------------------------------------------------ resume
def test_every_torch_load_of_a_resume_passes_weights_only_true(interrupted, monkeypatch):
    cfg, cache, split, run = interrupted
    calls, real = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only", "not passed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    train_segmentation(cfg, cache, split, run, progress=False, resume=True)
    assert len(calls) >= 2, calls  # our check of last.ckpt and Lightning's restore
    assert all(c is True for c in calls), calls


def test_lightnings_own_restore_refuses_a_hostile_last_ckpt(interrupted, monkeypatch, tmp_path):
    """Even without our check of the resume point, trainer.fit(weights_only=True) runs no code, also with
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (which turns weights_only off where it is not passed)."""
    cfg, cache, split, run = interrupted
    marker = tmp_path / "MARKER"
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["payload"] = MakesFile(marker)
    torch.save(ckpt, last)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import cardiossp.train.run as run_mod

    monkeypatch.setattr(run_mod, "check_resume_point", lambda ckpt, cfg: None)  # only Lightning loads it
    monkeypatch.setattr(run_mod, "kept_metrics", lambda *a, **k: contextlib.nullcontext())  # (it reads the step)
    with pytest.raises(pickle.UnpicklingError):
        train_segmentation(cfg, cache, split, run, progress=False, resume=True)
    assert not marker.exists()


def test_done_json_keeps_the_time_of_earlier_sessions(interrupted):
    cfg, cache, split, run = interrupted
    elapsed = run / "logs" / "elapsed.json"
    assert json.loads(elapsed.read_text())["epoch"] == 1
    elapsed.write_text(json.dumps({"seconds": 1000.0, "epoch": 1}))  # as if the first session took 1000 s
    train_segmentation(cfg, cache, split, run, progress=False, resume=True)
    done = json.loads((run / "done.json").read_text())
    assert 1000.0 < done["seconds"] < 1000.0 + 600  # the first session plus this (short) one


# ------------------------------------------------------------------ checksums
def test_save_weights_records_a_sha256sum_line_and_load_checks_it(tmp_path):
    path = tmp_path / "w.pt"
    digest = save_weights({"a": torch.arange(4.0)}, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert checksum_path(path).read_text() == f"{digest}  w.pt\n"
    assert verify_checksum(path) is True
    assert torch.equal(load_torch_file(path)["a"], torch.arange(4.0))
    torch.save({"a": torch.arange(4.0) + 1}, path)  # changed after it was recorded
    with pytest.raises(CheckpointError, match=r"w\.pt: SHA-256 checksum mismatch"):
        load_torch_file(path)
    checksum_path(path).write_text("not a digest\n")
    with pytest.raises(CheckpointError, match=r"w\.pt\.sha256: not a SHA-256 record"):
        load_torch_file(path)
    checksum_path(path).unlink()
    assert verify_checksum(path) is False and load_torch_file(path)["a"][0] == 1  # no record: loads


def test_pretrained_weights_without_a_record_load_with_a_warning(tmp_path):
    from cardiossp.config import PretrainConfig
    from cardiossp.train.pretrain import PretrainModule
    from cardiossp.train.transfer import load_pretrained

    record = PretrainModule(load_config(PretrainConfig, "pretrain", "tiny", {"method": "simclr"})).pretrained_record()
    torch.save(record, tmp_path / "pretrained.pt")  # an old file: no pretrained.pt.sha256
    with pytest.warns(UserWarning, match="no checksum record"):
        assert load_pretrained(tmp_path)["method"] == "simclr"
    save_weights(record, tmp_path / "pretrained.pt")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pretrained(tmp_path)  # recorded: no warning


@pytest.mark.parametrize("content, needle", [
    (b"", "the file is empty"),
    (b"plain text", "not a checkpoint (cannot be read as a torch file)"),
    (np.random.default_rng(0).bytes(3000), "not a checkpoint (cannot be read as a torch file)"),
])
def test_unreadable_files_are_described(tmp_path, content, needle):
    path = tmp_path / "x.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"x\.ckpt: cannot read checkpoint: ") as e:
        load_torch_file(path)
    assert needle in str(e.value)


def test_a_truncated_torch_file_is_described(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"a": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_torch_file(path)


# ------------------------------------------------------------------ the handler's lines
def raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("did not raise")


def test_error_lines_name_the_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")
    line = error_line(raised(lambda: torch.load(bad, weights_only=True)))  # raised inside torch.load
    assert line == f"{bad}: not a checkpoint (cannot be read as a torch file)"
    torch.save({"a": torch.zeros(10)}, bad)
    bad.write_bytes(bad.read_bytes()[:-30])
    assert error_line(raised(lambda: torch.load(bad, weights_only=True))).startswith(f"{bad}: truncated")
    assert error_line(DataError(tmp_path / "x.nii", "spacing is zero")) == f"{tmp_path / 'x.nii'}: spacing is zero"
    f = tmp_path / "file"
    f.write_text("x")
    assert error_line(raised(lambda: (f / "sub").mkdir(parents=True))) == \
        f"{f / 'sub'}: Not a directory: {f} is a file, not a folder"
    assert error_line(raised(lambda: f.mkdir())) == f"{f}: is a file, not a folder"
    assert error_line(raised(lambda: open(tmp_path / "none.txt"))) == \
        f"{tmp_path / 'none.txt'}: No such file or directory"
    assert error_line(PermissionError(13, "Permission denied", "/ro/run")) == "/ro/run: Permission denied"


def test_library_errors_are_one_line_and_bugs_are_not_hidden(tmp_path):
    y = error_line(raised(lambda: yaml.safe_load("a: [1,\n b")))
    assert y.startswith(("ParserError:", "ScannerError:")) and "\n" not in y
    assert error_line(pickle.UnpicklingError("invalid load key")) == "UnpicklingError: invalid load key"
    z = tmp_path / "z.zip"
    z.write_bytes(b"not a zip")
    assert "BadZipFile" in error_line(raised(lambda: zipfile.ZipFile(z)))
    worker = RuntimeError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                          "last):\n  File \"x.py\", line 1\ncardiossp.errors.DataError: c/s1/image.npy: truncated")
    assert error_line(worker) == "c/s1/image.npy: truncated"
    assert error_line(ValueError("a bug")) is None  # unknown errors keep their traceback
    assert error_line(KeyError("k")) is None
