"""The command line: each command reaches the API and reports errors in one line."""

import yaml
from typer.testing import CliRunner

from cardiossp.cli import app
from cardiossp.data.readers.phantom import write_phantom_config

runner = CliRunner()


def test_prepare_info_split_on_the_phantom(tmp_path):
    raw = tmp_path / "raw"
    write_phantom_config(raw, n_subjects=6, n_unlabeled=1, size=48, n_slices=3, n_frames=3)
    r = runner.invoke(app, ["info", str(raw), "--reader", "phantom"])
    assert r.exit_code == 0, r.output
    assert "phantom" in r.output and "total" in r.output
    cache = tmp_path / "cache"
    r = runner.invoke(app, ["prepare", "-r", "phantom", "-d", str(raw), "--out", str(cache), "--spacing", "1.5",
                            "--size", "48"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(cache), "--subjects"])
    assert r.exit_code == 0 and "phantom005" in r.output
    split = tmp_path / "split.yaml"
    r = runner.invoke(app, ["split", "--cache", str(cache), "--out", str(split), "--val", "1", "--test", "1",
                            "--budgets", "2", "--vendor-groups", "AB=A+B,CD=C+D"])
    assert r.exit_code == 0, r.output
    s = yaml.safe_load(split.read_text())
    assert len(s["train"]) == 3 and len(s["unlabeled"]) == 1 and len(s["budgets"][2]) == 2
    assert set(s["subsets"]) == {"vendor_AB", "vendor_CD"}


def test_errors_are_one_clear_line(tmp_path):
    r = runner.invoke(app, ["prepare", "-r", "acdc", "-r", "mnms", "-d", str(tmp_path), "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "one --reader per --data" in r.output
    r = runner.invoke(app, ["info", str(tmp_path)])
    assert r.exit_code == 2 and "no cache.json" in r.output
    r = runner.invoke(app, ["prepare", "-r", "acdc", "-d", str(tmp_path), "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "no subjects found" in r.output and str(tmp_path) in r.output
    r = runner.invoke(app, ["train", "--cache", str(tmp_path), "--split", str(tmp_path / "s.yaml"), "--out",
                            str(tmp_path / "r"), "--preset", "nope"])
    assert r.exit_code == 2 and "unknown train preset 'nope'" in r.output
    r = runner.invoke(app, ["predict", str(tmp_path / "x.nii.gz"), "--model", str(tmp_path / "none"), "--out",
                            str(tmp_path / "o")])
    assert r.exit_code == 2 and "error" in r.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_usage_errors_are_one_error_line_naming_the_command():
    cases = [(["prepare", "--size", "abc"], "cardiossp prepare: ", "'--size'"),
             (["evaluate"], "cardiossp evaluate: ", "'--run'"),
             (["train", "--no-such-option"], "cardiossp train: ", "--no-such-option"),
             (["no-such-command"], "cardiossp: ", "'no-such-command'"),
             (["--no-such-flag"], "cardiossp: ", "--no-such-flag")]
    for args, where, problem in cases:
        r = runner.invoke(app, args, prog_name="cardiossp")
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2, (args, r.output)
        assert len(lines) == 1 and lines[0].startswith("error: " + where) and problem in lines[0], (args, r.output)
        assert f"(see '{where[:-2]} --help')" in lines[0] and "╭" not in r.output
