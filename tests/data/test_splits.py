"""Subject-level splits: disjoint, stratified, nested budgets, file round trip."""

from collections import Counter

import pandas as pd
import pytest

from cardiossp.data.budgets import parse_budget, parse_budgets, pretraining_subjects, training_subjects
from cardiossp.data.splits import load_split, make_split, save_split
from cardiossp.errors import ConfigError


def _subjects(n_per_vendor=20, vendors="ABCD", unlabeled=5):
    rows = [
        {"subject": f"s{v}{i:02d}", "vendor": v, "pathology": "NOR", "dataset": "x", "labeled_frames": 2}
        for v in vendors
        for i in range(n_per_vendor)
    ]
    rows += [
        {"subject": f"u{i}", "vendor": "A", "pathology": None, "dataset": "x", "labeled_frames": 0}
        for i in range(unlabeled)
    ]
    return pd.DataFrame(rows)


def test_split_is_disjoint_stratified_and_nested(tmp_path):
    subj = _subjects()
    s = make_split(
        subj,
        seed=3,
        val=0.15,
        test=0.25,
        budgets=[4, 8, 20],
        vendor_groups={"vendor_AB": ["A", "B"], "vendor_CD": ["C", "D"]},
    )
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


def test_fraction_budgets_are_nested_with_count_budgets(tmp_path):
    s = make_split(_subjects(), seed=2, val=0.15, test=0.25, budgets=[0.05, 10, "all", "25%"])
    n_train = len(s["train"])
    assert n_train == 48
    # 5% of 48 = 2.4 -> 2 patients, 25% -> 12, "all" -> 48; every budget a prefix of one stratified order
    assert sorted(s["budgets"]) == [2, 10, 12, 48] and s["budget_fractions"] == {0.05: 2, 0.25: 12}
    assert set(s["budgets"][2]) < set(s["budgets"][10]) < set(s["budgets"][12]) < set(s["budgets"][48])
    assert s["budgets"][48] == s["train"]
    assert make_split(_subjects(), seed=2, val=0.15, test=0.25, budgets=[10])["budgets"][10] == s["budgets"][10]
    back = load_split(save_split(s, tmp_path / "split.yaml"))
    assert back["budget_fractions"] == {0.05: 2, 0.25: 12}
    for b in (0.05, "5%", "0.05"):
        assert training_subjects(back, budget=b) == s["budgets"][2]
    assert training_subjects(back, budget="all") == s["train"]
    assert len(training_subjects(back, budget=0.5)) == 24  # not stored: drawn from the training subjects


def test_a_budget_the_split_does_not_store_is_drawn_nested_with_the_stored_ones(tmp_path):
    s = load_split(save_split(make_split(_subjects(), seed=2, val=0.15, test=0.25, budgets=[2, 10]),
                              tmp_path / "split.yaml"))
    two, ten = set(s["budgets"][2]), set(s["budgets"][10])
    five = training_subjects(s, 5)
    assert len(five) == 5 and two < set(five) < ten
    assert training_subjects(s, 5) == five  # the split's seed: the same draw every time
    twenty = training_subjects(s, 20)
    assert len(twenty) == 20 and ten < set(twenty) <= set(s["train"])
    assert set(training_subjects(s, 1)) < two
    # without stored budgets the draw is the seeded permutation of the training subjects, as before
    bare = {**s, "budgets": {}, "budget_fractions": {}}
    assert len(training_subjects(bare, 5)) == 5 and set(training_subjects(bare, 5)) <= set(s["train"])


@pytest.mark.parametrize("bad", ["abc", 1.5, 0, "-5%", "150%"])
def test_bad_budgets_are_clear_errors(bad):
    with pytest.raises(ConfigError, match="label budget"):
        parse_budget(bad)


def test_budget_parsing():
    assert parse_budgets("0.05, 10,all,5%") == [0.05, 10, "all", 0.05]
    assert parse_budget(1) == 1 and parse_budget("100%") == 1.0


def test_patients_stay_together_and_views_default_to_every_view_without_short_axis():
    rows = [
        {
            "subject": f"camus_p{i}_{v}",
            "patient": f"p{i}",
            "dataset": "camus",
            "view": v,
            "vendor": None,
            "pathology": None,
            "labeled_frames": 2,
        }
        for i in range(10)
        for v in ("2CH", "4CH")
    ]
    subj = pd.DataFrame(rows)
    s = make_split(subj, seed=0, val=2, test=2, budgets=[0.2, 3])
    assert s["views"] == ["2CH", "4CH"] and not s["other_views"]
    patient = dict(zip(subj.subject, subj.patient))
    parts = [{patient[i] for i in s[k]} for k in ("train", "val", "test")]
    assert [len(p) for p in parts] == [6, 2, 2] and len(set().union(*parts)) == 10
    assert len(s["train"]) == 12 and len(s["budgets"][1]) == 2 and len(s["budgets"][3]) == 6
    assert s["budget_fractions"] == {0.2: 1}
    only_4ch = make_split(subj, seed=0, val=2, test=2, views=["4CH"])
    assert len(only_4ch["other_views"]) == 10 and all(i.endswith("4CH") for i in only_4ch["train"])
    with pytest.raises(ConfigError, match="official_split"):
        make_split(subj, official=True)


def test_short_axis_is_split_and_long_axis_kept_apart():
    subj = _subjects(n_per_vendor=5, unlabeled=0)
    subj["view"] = "SA"
    la = subj.assign(subject=subj.subject + "_LA", view="LA")
    s = make_split(pd.concat([subj, la], ignore_index=True), val=2, test=4)
    assert s["views"] == ["SA"] and sorted(s["other_views"]) == sorted(la.subject)


def test_cli_split_accepts_fraction_budgets(tmp_path):
    from typer.testing import CliRunner

    from cardiossp.cli import app
    from cardiossp.data.cache import prepare
    from cardiossp.data.readers.phantom import write_phantom_config

    ph = write_phantom_config(tmp_path / "ph", n_subjects=8, n_unlabeled=0, size=32, n_slices=2, n_frames=2)
    cache = prepare([("phantom", ph)], tmp_path / "cache", spacing=2.0, size=32)
    out = tmp_path / "split.yaml"
    r = CliRunner().invoke(
        app, ["split", "--cache", str(cache), "--out", str(out), "--val", "1", "--test", "1", "--budgets", "0.5,2,all"]
    )
    assert r.exit_code == 0, r.output
    s = load_split(out)
    assert sorted(s["budgets"]) == [2, 3, 6] and s["budget_fractions"] == {0.5: 3}
    assert "0.5 of the labels = budget 3" in " ".join(r.output.split())  # rich wraps long lines
    r = CliRunner().invoke(app, ["split", "--cache", str(cache), "--out", str(out), "--budgets", "five"])
    assert r.exit_code != 0 and "label budget 'five'" in " ".join(r.output.split())
