"""Iterations to reach 95 % of the final validation Dice, against hand-computed curves."""

import pandas as pd

from cardiossp.experiments.convergence import convergence_summary, convergence_table, iterations_to_fraction


def test_iterations_to_fraction():
    # final 0.80 -> threshold 0.76: first reached at step 199 (the 200th iteration)
    assert iterations_to_fraction([49, 99, 149, 199, 249], [0.1, 0.5, 0.7, 0.77, 0.8]) == (0.8, 200)
    # a curve that peaks and falls back: threshold from the final value, reached early
    assert iterations_to_fraction([9, 19, 29], [0.9, 0.95, 0.6]) == (0.6, 10)


def test_convergence_table_mean_std_over_seeds():
    curves = pd.DataFrame({
        "run": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
        "method": ["scratch"] * 6 + ["mim"] * 3,
        "step": [99, 199, 299] * 3,
        "val_dice": [0.2, 0.5, 0.8, 0.7, 0.78, 0.8, 0.8, 0.8, 0.8],
    })
    curves["run"] = curves["run"].map({"a": "scratch-n10-s0", "b": "scratch-n10-s1", "c": "mim-n10-s0"})
    info = pd.DataFrame({"run": ["scratch-n10-s0", "scratch-n10-s1", "mim-n10-s0"], "budget": ["10"] * 3,
                         "seed": [0, 1, 0], "studies": ["x"] * 3})
    summary = convergence_summary(curves, info)
    assert summary.set_index("run")["iterations_to_95"].to_dict() == {
        "scratch-n10-s0": 300, "scratch-n10-s1": 200, "mim-n10-s0": 100}
    t = convergence_table(summary)
    assert t.loc["scratch-n10", "iterations to 95 %"] == "250 ± 71"
    assert t.loc["mim-n10", "final val Dice"] == "0.800" and t.loc["scratch-n10", "seeds"] == 2
