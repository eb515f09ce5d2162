"""The README's main job end to end: `cardiossp demo` runs the smoke plan on the built-in phantom."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from cardiossp.cli import app
from cardiossp.experiments import load_plan, run_campaign

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick"])  # the full demo: docs/RESULTS.md
    torch.set_num_threads(n)
    assert result.exit_code == 0, result.output
    return out


def test_demo_writes_results_tables_plots_and_overlays(demo_dir):
    res = pd.read_csv(demo_dir / "results.csv")
    assert res["run"].nunique() == 9  # 4 label-budget runs + 2 phase + 2 domain + 1 augmentation (no aug)
    dice = res[(res["metric"] == "dice") & (res["class"] == "mean")]
    assert dice["value"].between(0, 1).all()
    # the pipeline learns something on the phantom in 120 steps: the LV is found by every label-budget run
    lv = res[(res["metric"] == "dice") & (res["class"] == "LV") & (res["studies"].str.contains("label_budget"))]
    assert (lv.groupby("run")["value"].mean() > 0.5).all()
    md = (demo_dir / "tables.md").read_text()
    for title in ("labeled training subjects", "Unseen phase", "Unseen domain", "Augmentation ablation"):
        assert title in md
    for name in ("dice_vs_budget", "training_curves"):
        assert (demo_dir / "plots" / f"{name}.png").stat().st_size > 1000
        assert (demo_dir / "plots" / f"{name}.svg").is_file()
    assert list((demo_dir / "plots").glob("overlay_*.png"))
    page = (demo_dir / "report.html").read_text()
    assert page.count("<table") >= 2 and page.count("data:image/png;base64,") >= 2


def test_finished_demo_campaign_has_nothing_left_to_run(demo_dir):
    rows = run_campaign(load_plan("smoke"), demo_dir, dry_run=True)
    assert {r["status"] for r in rows} == {"done"}


def test_table_and_plot_commands_on_the_demo(demo_dir):
    r = CliRunner().invoke(app, ["table", str(demo_dir)])
    assert r.exit_code == 0, r.output
    assert (demo_dir / "tables" / "label_budget.csv").is_file()
    r = CliRunner().invoke(app, ["plot", str(demo_dir)])
    assert r.exit_code == 0 and "dice_vs_budget.svg" in r.output
