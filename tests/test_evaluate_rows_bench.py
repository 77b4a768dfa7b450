"""``bench/evaluate_rows.py`` measures each checkout in its own process and writes the ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_against_a_baseline_writes_both_and_the_ratio(tmp_path):
    out = tmp_path / "rows.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "evaluate_rows.py"), "--users", "3000",
                    "--baseline", str(REPO), "--json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"baseline", "current"} and result["users"] == 3000
    current = result["runs"]["current"]
    assert current["pairs_dtype"] == "int32"  # SASRec's pairs as the evaluation holds them
    assert current["interactions"] >= 5 * 3000 and current["peak_gb"] > 0
    assert result["peak_ratio"] == current["peak_gb"] / result["runs"]["baseline"]["peak_gb"]
