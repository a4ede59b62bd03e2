"""tools/bench_budget.py on a tiny stream: it runs, reports every row, and its numbers hang
together (the scheduler spends a generous budget on replay, fractions are fractions)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_budget.py"


@pytest.mark.slow
def test_bench_budget_reports_both_targets(tmp_path, capsys):
    main = runpy.run_path(str(TOOL), run_name="bench_budget")["main"]
    out = tmp_path / "budget.json"
    code = main(["--samples", "300", "--strategies", "latent-replay", "--compare",
                 "latent-replay", "--budgets", "1", "50", "--seeds", "0", "1",
                 "--fixed-replay", "0", "8", "--fixed-steps", "1", "2", "--warmup", "5",
                 "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    for heading in ("### Part A", "### Part B: fixed replay", "### Part B: scheduled",
                    "### Accuracy as the budget grows"):
        assert heading in text
    assert text.count("target 1: latent-replay") == 2  # one verdict per budget
    assert text.count("target 2: latent-replay") == 2

    report = json.loads(out.read_text())
    rows = {r["budget_ms"]: r for r in report["part_a"]}
    assert set(rows) == {1.0, 50.0}
    for row in report["part_a"] + report["part_b"]:
        assert 0 <= row["over_tol"] <= 1
    # 50 ms holds the whole replay cap on this tiny head; 1 ms cannot hold it.
    assert rows[50.0]["replay"] > rows[1.0]["replay"]
    assert rows[50.0]["learned_on_arrival"] == 1.0
    grid = {(g["replay"], g["steps"]): g for g in report["fixed_grid"]}
    assert set(grid) == {(0, 1), (8, 1), (0, 2), (8, 2)}
    # Two steps through the pinned scheduler: it plans exactly r replayed and 2 steps.
    pinned = [r for r in report["runs"] if r["kind"] == "pinned"]
    assert pinned and all(r["scheduler"]["mean_steps"] == 2.0 for r in pinned)
    assert all(r["scheduler"]["mean_replay_per_step"] == r["replay"] for r in pinned)
    assert len(report["runs"]) == 2 * (2 + 4)  # 2 seeds x (2 budgets + 4 fixed settings)
