"""Paper-style tables reproduce hand-computed mean ± std across seeds from a fixture results file."""

import pandas as pd

from cardiossp.experiments.tables import all_tables, domain_table, label_budget_table, mean_std, to_markdown


def _rows(run, method, budget, seed, values, studies="label_budget", phases=("ED", "ES"), subset="",
          vendors=("A", "C"), augment="paper"):
    """Two subjects (vendors A and C) x the phases; ``values[(vendor, phase)]`` is the mean Dice of that case."""
    out = []
    for v in vendors:
        for ph in phases:
            out.append({"run": run, "studies": studies, "method": method, "budget": budget,
                        "budget_label": str(budget), "seed": seed, "train_phases": "ED+ES", "augment": augment,
                        "subset": subset, "subject": f"s{v}", "vendor": v, "phase": ph, "class": "mean",
                        "metric": "dice", "value": values[(v, ph)]})
    return out


def _const(x):
    return {(v, ph): x for v in "AC" for ph in ("ED", "ES")}


def test_label_budget_cells_are_mean_and_sample_std_over_seeds():
    rows = (_rows("scratch-n5-s0", "scratch", 5, 0, _const(0.6)) + _rows("scratch-n5-s1", "scratch", 5, 1, _const(0.8))
            + _rows("mim-n5-s0", "mim", 5, 0, {("A", "ED"): 0.9, ("A", "ES"): 0.7, ("C", "ED"): 0.8, ("C", "ES"): 0.6})
            + _rows("mim-n10-s0", "mim", 10, 0, _const(0.85)) + _rows("mim-n3-s0", "mim", 3, 0, _const(0.5)))
    t = label_budget_table(pd.DataFrame(rows))
    # scratch n5: runs score 0.6 and 0.8 -> mean 0.7, sample std sqrt(((0.1)^2 * 2) / 1) = 0.1414
    assert t.loc["5", "scratch"] == "0.700 ± 0.141"
    assert t.loc["5", "mim"] == "0.750"  # one seed: the mean of its 4 cases (0.9 + 0.7 + 0.8 + 0.6) / 4
    assert t.loc["10", "mim"] == "0.850" and pd.isna(t.loc["10", "scratch"])
    assert list(t.index) == ["10", "5", "3"]  # largest budget first, by number (not "10" < "3" < "5")
    assert mean_std([0.5, 0.7, 0.9]) == "0.700 ± 0.200"


def test_domain_table_splits_in_and_out_of_domain():
    vals = {("A", "ED"): 0.9, ("A", "ES"): 0.8, ("C", "ED"): 0.5, ("C", "ES"): 0.4}
    rows = _rows("scratch-nall-s0-AB", "scratch", 8, 0, vals, studies="domain", subset="AB")
    t = domain_table(pd.DataFrame(rows), "vendor", {"AB": ["A", "B"], "CD": ["C", "D"]})
    assert t.loc[("scratch", "AB"), "in-domain"] == "0.850"
    assert t.loc[("scratch", "AB"), "out-of-domain"] == "0.450"


def test_all_tables_and_markdown():
    rows = (_rows("scratch-n5-s0", "scratch", 5, 0, _const(0.6), studies="label_budget+augmentation")
            + _rows("scratch-n5-s0-augnone", "scratch", 5, 0, _const(0.4), studies="augmentation", augment="none")
            + _rows("scratch-n5-s0-ED", "scratch", 5, 0, {("A", "ED"): 0.8, ("C", "ED"): 0.6, ("A", "ES"): 0.5,
                                                            ("C", "ES"): 0.3}, studies="phase"))
    df = pd.DataFrame(rows)
    df.loc[df["run"].str.endswith("-ED"), "train_phases"] = "ED"
    tables = all_tables(df, {})
    assert set(tables) == {"label_budget", "phase", "augmentation"}
    assert tables["augmentation"].loc["scratch", "none"] == "0.400"
    assert tables["augmentation"].loc["scratch", "paper"] == "0.600"
    assert tables["phase"].loc[("scratch", "ED"), "ED"] == "0.700"
    assert tables["phase"].loc[("scratch", "ED"), "ES"] == "0.400"
    md = to_markdown(tables)
    assert "| 5 | 0.600 |" in md and "Augmentation ablation" in md
