"""The issue 6 acceptance tools still run: a short crash test and a short soak (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _run_tool(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(TOOLS / name), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_crash_test_survives_three_kills_and_ends_like_an_uninterrupted_run(tmp_path):
    figures = tmp_path / "crash.json"
    done = _run_tool("crash_test.py", "--kills", "3", "--seed", "1", "--workdir",
                     str(tmp_path / "work"), "--json", str(figures), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    result = json.loads(figures.read_text())
    assert result["kills_survived"] == 3 and result["passed"]
    assert result["mismatches"] == [] and result["resume_failures"] == []
    assert "result                         PASS" in done.stdout


@pytest.mark.slow
def test_soak_keeps_memory_flat_on_a_short_stream(tmp_path):
    figures = tmp_path / "soak.json"
    done = _run_tool("soak.py", "--samples", "20000", "--json", str(figures), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    result = json.loads(figures.read_text())
    assert result["samples"] >= 19_968 and result["updates"] == result["samples"] // 32
    assert result["passed"] and result["rss_growth_after_warmup"] < 0.05
    assert result["buffer_n_stored"] == 1000 and result["prequential_accuracy"] > 0.3
