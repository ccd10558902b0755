"""bench/simulate_table.py, the script that regenerates the README's capping table, on a tiny run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "simulate_table.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("simulate_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_has_a_row_per_ratio_and_policy_and_one_per_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl = tmp_path / "runs.jsonl"

    code = _load().main(
        ["--ratios", "1.0,1.5", "--seeds", "1", "--duration", "20", "--jobs", "0", "--jsonl", str(jsonl)]
    )

    assert code == 0
    out = capsys.readouterr().out
    summary_rows = [line for line in out.splitlines() if line.startswith(("| 1x |", "| 1.5x |"))]
    assert len(summary_rows) == 2 * 4 + 2 * 4 * 4  # summary: ratio x policy; full: ratio x trace x policy
    assert "| 1.5x | ours |" in out
    runs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(runs) == 32
    # Tokens are relative to the no-cap run of the same trace, ratio and seed.
    assert all(r["tokens_high_vs_uncapped"] == 1.0 for r in runs if r["policy"] == "none")
