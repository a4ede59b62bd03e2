"""The scripts in examples/ are what new users copy first: they must run and learn."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _accuracies(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"accuracy[^:\n]*: (\d\.\d+)", text)]


@pytest.mark.parametrize("script", ["quickstart_api.py", "own_arrays_one_at_a_time.py"])
def test_example_runs_and_learns(script, capsys):
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    accuracies = _accuracies(capsys.readouterr().out)
    assert accuracies, "the example printed no accuracy"
    assert min(accuracies) > 0.8
