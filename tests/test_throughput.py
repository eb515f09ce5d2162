"""``cardiossp bench --throughput``: the table is measured, not written by hand."""

import re

from cardiossp.throughput import throughput_table


def test_quick_throughput_table(tmp_path, one_thread):
    text = throughput_table(tmp_path, quick=True, steps=2)
    assert (tmp_path / "throughput.md").read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| tiny")]
    assert [r.split("|")[2].strip() for r in rows] == ["fp32", "bf16"]
    for r in rows:
        bare, engine = (float(v) for v in r.split("|")[3:5])
        assert bare > 0 and engine > 0
    assert re.fullmatch(r"[0-9.]+x", rows[1].split("|")[6].strip())  # the measured bf16 / fp32 speed-up
    assert rows[0].split("|")[6].strip() == ""
    assert "CPU: " in text and "native bf16" in text
