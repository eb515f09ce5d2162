"""``cardiossp.atomic``: the target is replaced only by a complete file; nothing is left behind."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cardiossp import atomic


def test_writers_round_trip_and_create_the_folder(tmp_path):
    assert atomic.write_text(tmp_path / "a" / "t.txt", "hi").read_text() == "hi"
    assert json.loads(atomic.write_json(tmp_path / "j.json", {"x": [1, 2]}).read_text()) == {"x": [1, 2]}
    assert json.loads(atomic.write_json(tmp_path / "d.json", {"p": tmp_path}, default=str).read_text()) == {
        "p": str(tmp_path)}
    assert yaml.safe_load(atomic.write_yaml(tmp_path / "y.yaml", {"b": 1, "a": 2}).read_text()) == {"b": 1, "a": 2}
    assert list(yaml.safe_load((tmp_path / "y.yaml").read_text())) == ["b", "a"]  # order kept
    frame = pd.DataFrame({"a": [1, 2]})
    assert pd.read_csv(atomic.write_csv(tmp_path / "f.csv", frame)).equals(frame)
    assert torch.equal(torch.load(atomic.save_torch({"w": torch.ones(2)}, tmp_path / "w.pt"))["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "d.json", "f.csv", "j.json", "w.pt", "y.yaml"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = atomic.write_text(tmp_path / "t.txt", "old")
    with pytest.raises(ValueError):
        atomic.write_json(target, {"x": float("nan")}, allow_nan=False)
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_the_temporary_is_a_hidden_sibling_with_the_requested_suffix(tmp_path):
    with atomic.atomic_path(tmp_path / "x.npy", suffix=".npy") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".x.npy.tmp-") and tmp.suffix == ".npy"
        np.save(tmp, np.arange(3))  # np.save would append .npy to any other name
    assert np.load(tmp_path / "x.npy").tolist() == [0, 1, 2] and len(list(tmp_path.iterdir())) == 1
    with atomic.atomic_path(tmp_path / "a") as t1, atomic.atomic_path(tmp_path / "a") as t2:
        assert t1 != t2  # concurrent writers of one process do not share a temporary
        t1.write_text("1")
        t2.write_text("2")
