"""`edgecl learn` as a service runs it: stopped by signals, restarted with one command line,
and refusing before it learns when its results could not be saved."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgecl.runtime.run
from edgecl.cli import cli
from edgecl.runtime.learner import Learner

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def args(tmp_path_factory) -> list[str]:
    """A small class-incremental run (learned an experience at a time: reproducible bit for
    bit) on the cpu profile with one thread, so that a shared machine slows it down least."""
    text = (REPO / "edgecl" / "firmware_profiles" / "cpu.toml").read_text()
    text = re.sub(r"(?m)^threads = \d+", "threads = 1", text)
    profile = tmp_path_factory.mktemp("profile") / "cpu-1t.toml"
    profile.write_text(text.replace('name = "cpu"', 'name = "cpu-1t"'))
    return ["learn", "--profile", str(profile), "--dataset", "mnist1d:600", "--experiences",
            "3", "--strategy", "ar1*"]


def _timing_free(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k not in {"wall_s", "latency_ms", "checkpoints"}}
    out["memory"] = {k: v for k, v in report["memory"].items() if k != "peak_rss_mb"}
    out["budget"] = {k: v for k, v in report["budget"].items()
                     if k not in {"over_budget_fraction", "far_over_budget_fraction",
                                  "update_latency_ms"}}
    return out


def _experience_rows(stdout: str) -> list[str]:
    """The table's per-experience lines ("  0  0,1  0.997  0.972")."""
    return [line for line in stdout.splitlines() if re.match(r"\s*\d+\s+\S+\s+[\d.]+", line)]


def _signal_on_learn(monkeypatch, *, call: int, signals: list[int]) -> None:
    """Send ``signals`` to this process from inside the ``call``-th learn_many, as Ctrl-C or
    a service manager would, mid-update."""
    learn_many = Learner.learn_many
    calls = []

    def learn_and_signal(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            for signum in signals:
                os.kill(os.getpid(), signum)
        return learn_many(self, *args, **kwargs)

    monkeypatch.setattr(Learner, "learn_many", learn_and_signal)


@pytest.fixture
def handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    after = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert after == before, "the CLI left its signal handlers installed"


def test_sigterm_stops_after_the_update_saves_and_resume_ends_the_same(args, tmp_path,
                                                                       monkeypatch, handlers):
    reference = CliRunner().invoke(cli, [*args, "--checkpoint", str(tmp_path / "a"),
                                         "--report", str(tmp_path / "a.json")])
    assert reference.exit_code == 0, reference.output
    command = [*args, "--checkpoint", str(tmp_path / "ck"), "--resume",
               "--report", str(tmp_path / "r.json")]

    _signal_on_learn(monkeypatch, call=2, signals=[signal.SIGTERM])
    stopped = CliRunner().invoke(cli, command)
    assert stopped.exit_code == 143, stopped.output
    assert f"no checkpoint in {tmp_path / 'ck'} yet, starting a new run" in stopped.stderr
    # The experience being learned when the signal came was finished and saved.
    newest = tmp_path / "ck" / "step-000000002"
    assert f"--resume will continue from {newest}" in stopped.stderr
    assert "stopped by SIGTERM" in stopped.stderr and "Traceback" not in stopped.output
    assert (newest / "manifest.json").is_file()
    assert not (tmp_path / "r.json").exists()  # no report for an unfinished run

    monkeypatch.undo()
    resumed = CliRunner().invoke(cli, command)  # the very same command line
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed from {newest}" in resumed.stderr
    # The table and the report cover the whole run, not only its last part.
    assert _experience_rows(resumed.stdout) == _experience_rows(reference.stdout)
    assert len(_experience_rows(resumed.stdout)) == 3
    # The first start's "no checkpoint yet" note was about that start only.
    assert "no checkpoint" not in resumed.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert _timing_free(report) == _timing_free(json.loads((tmp_path / "a.json").read_text()))
    assert report["checkpoints"]["n_saved"] == 3 and report["checkpoints"]["n_resumed"] == 1


def test_ctrl_c_without_checkpoints_exits_130_saying_nothing_was_saved(args, tmp_path,
                                                                       monkeypatch, handlers):
    _signal_on_learn(monkeypatch, call=1, signals=[signal.SIGINT])
    result = CliRunner().invoke(cli, [*args, "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 130, result.output
    assert "stopped by SIGINT" in result.stderr and "nothing was saved" in result.stderr
    assert "final accuracy" not in result.stdout and not (tmp_path / "r.json").exists()


def test_a_second_ctrl_c_aborts_at_once(args, tmp_path, monkeypatch, handlers):
    _signal_on_learn(monkeypatch, call=1, signals=[signal.SIGINT, signal.SIGINT])
    result = CliRunner().invoke(cli, [*args, "--checkpoint", str(tmp_path / "ck")])
    assert result.exit_code == 130, result.output
    assert "aborted at once" in result.stderr and "no checkpoint was saved yet" in result.stderr
    assert "Traceback" not in result.output
    assert not list((tmp_path / "ck").glob("step-*"))  # the first experience never finished


def test_resume_on_a_directory_without_checkpoints_starts_a_new_run(args, tmp_path):
    result = CliRunner().invoke(cli, [*args, "--checkpoint", str(tmp_path / "new"), "--resume",
                                      "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    note = f"warning: --resume: no checkpoint in {tmp_path / 'new'} yet, starting a new run"
    assert note in result.stderr.splitlines()
    assert note.removeprefix("warning: ") in json.loads((tmp_path / "r.json").read_text())[
        "warnings"]


@pytest.mark.parametrize("flag", ["--report", "--checkpoint", "--save-backbone"])
def test_an_unwritable_output_is_refused_before_any_data_is_loaded(args, tmp_path,
                                                                    monkeypatch, flag):
    def no_loading(*args, **kwargs):
        raise AssertionError("data was loaded before the output path was checked")

    monkeypatch.setattr(edgecl.runtime.run, "load_dataset", no_loading)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = blocker / "out"  # under a file: can be neither created nor written
    result = CliRunner().invoke(cli, [*args, flag, str(target)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {flag} {target}"), result.stderr
    assert "Traceback" not in result.output


def test_export_refuses_an_unwritable_out_before_it_builds_anything(tmp_path, monkeypatch):
    import edgecl.runtime.export

    def no_export(**kwargs):
        raise AssertionError("the model was built before --out was checked")

    monkeypatch.setattr(edgecl.runtime.export, "export_model", no_export)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(cli, ["export", "--backbone", "mlp", "--out",
                                      str(blocker / "m.onnx")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: --out {blocker / 'm.onnx'}: "), result.stderr


def test_a_report_path_that_is_a_directory_is_refused_at_once(tmp_path):
    from edgecl import UsageError
    from edgecl._files import check_writable_file

    with pytest.raises(UsageError, match="is a directory"):
        check_writable_file(tmp_path, "--report")
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


def test_sigterm_from_a_service_manager(args, tmp_path):
    """A real process under `Restart=on-failure`: SIGTERM mid-stream exits 143 and names the
    checkpoint, which the same command line with --resume then continues from."""
    ck = tmp_path / "ck"
    command = [sys.executable, "-m", "edgecl", *args, "--scenario", "online", "--schedule",
               "fixed", "--checkpoint", str(ck), "--resume"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(ck.glob("step-*")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    saved = re.search(r"--resume will continue from (\S+);", stderr)
    assert saved and (Path(saved.group(1)) / "manifest.json").is_file(), stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
