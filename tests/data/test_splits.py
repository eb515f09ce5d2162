"""Subject-level splits: disjoint, stratified, nested budgets, file round trip."""

from collections import Counter

import pandas as pd
import pytest

from cardiossp.data.splits import load_split, make_split, pretraining_subjects, save_split, training_subjects
from cardiossp.errors import ConfigError


def _subjects(n_per_vendor=20, vendors="ABCD", unlabeled=5):
    rows = [{"subject": f"s{v}{i:02d}", "vendor": v, "pathology": "NOR", "dataset": "x", "labeled_frames": 2}
            for v in vendors for i in range(n_per_vendor)]
    rows += [{"subject": f"u{i}", "vendor": "A", "pathology": None, "dataset": "x", "labeled_frames": 0}
             for i in range(unlabeled)]
    return pd.DataFrame(rows)


def test_split_is_disjoint_stratified_and_nested(tmp_path):
    subj = _subjects()
    s = make_split(subj, seed=3, val=0.15, test=0.25, budgets=[4, 8, 20],
                   vendor_groups={"vendor_AB": ["A", "B"], "vendor_CD": ["C", "D"]})
    tr, va, te = set(s["train"]), set(s["val"]), set(s["test"])
    assert not (tr & va or tr & te or va & te)
    assert len(tr | va | te) == 80 and len(te) == 20 and len(va) == 12
    vendor = dict(zip(subj.subject, subj.vendor))
    assert Counter(vendor[i] for i in s["test"]) == {"A": 5, "B": 5, "C": 5, "D": 5}
    assert Counter(vendor[i] for i in s["budgets"][4]) == {"A": 1, "B": 1, "C": 1, "D": 1}
    assert set(s["budgets"][4]) <= set(s["budgets"][8]) <= set(s["budgets"][20]) <= tr
    assert {vendor[i] for i in s["subsets"]["vendor_AB"]} == {"A", "B"}
    assert set(s["unlabeled"]) == {f"u{i}" for i in range(5)}
    assert set(pretraining_subjects(s)) == tr | set(s["unlabeled"])
    path = save_split(s, tmp_path / "split.yaml")
    back = load_split(path)
    assert back["budgets"][8] == s["budgets"][8] and back["test"] == s["test"]
    assert training_subjects(back, budget=8) == s["budgets"][8]
    ab5 = training_subjects(back, budget=5, subset="vendor_AB")
    assert len(ab5) == 5 and set(ab5) <= set(s["subsets"]["vendor_AB"])


def test_seed_changes_split_and_same_seed_repeats():
    subj = _subjects()
    a, b, c = (make_split(subj, seed=k) for k in (0, 0, 1))
    assert a["test"] == b["test"] and a["test"] != c["test"]


def test_impossible_budget_is_a_clear_error():
    with pytest.raises(ConfigError, match="budget 500"):
        make_split(_subjects(), budgets=[500])
