"""The HTML report renders in a real browser: headless Chromium (Debian's package, installed by
``.ci/run``) loads the page, and the tests read back its DOM and a screenshot."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from cardiossp.config import TrainConfig, load_config
from cardiossp.errors import ConfigError
from cardiossp.evaluate.run import evaluate_run
from cardiossp.html_report import write_html_report
from cardiossp.machine import machine_summary
from cardiossp.train.fit import train_segmentation

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


def _browser(tmp_path, page, *args) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, phantom_cache):
    cache, split = phantom_cache
    out = tmp_path_factory.mktemp("report") / "run"
    cfg = load_config(TrainConfig, "train", "tiny", {"schedule.epochs": 2, "schedule.iters_per_epoch": 4,
                                                     "schedule.val_every": 1})
    train_segmentation(cfg, cache, split, out, progress=False)
    evaluate_run(out)
    return out


def test_run_page_holds_tables_figures_and_escapes(evaluated_run):
    page = write_html_report(evaluated_run)
    text = page.read_text()
    assert page == evaluated_run / "report.html"
    assert "Evaluation: test" in text and "Worst cases" in text and "dice LV" in text
    assert text.count("<table") >= 4  # facts, segmentation, clinical, worst cases
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) >= 5  # 2 overlays, 2 volume curves, the validation curve
    assert "http://" not in text and "https://" not in text  # self-contained
    assert "<script" not in text
    done = json.loads((evaluated_run / "done.json").read_text())
    assert html.escape(machine_summary(done["machine"])) in text  # the training time names its machine


def test_refuses_a_folder_that_is_neither(tmp_path):
    with pytest.raises(ConfigError, match="neither a campaign folder"):
        write_html_report(tmp_path)


@needs_browser
def test_run_page_renders_in_headless_chromium(evaluated_run, tmp_path):
    page = write_html_report(evaluated_run, tmp_path / "page.html")
    dom = _browser(tmp_path, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<table") >= 4 and dom.stdout.count("<img") >= 5
    shot = tmp_path / "shot.png"
    r = _browser(tmp_path, page, f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars")
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 10 and (pixels < 100).mean() > 0.005  # text, lines and images, not a blank page


def test_report_command(evaluated_run, tmp_path):
    from typer.testing import CliRunner

    from cardiossp.cli import app

    r = CliRunner().invoke(app, ["report", str(evaluated_run), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "neither a campaign folder" in r.output
