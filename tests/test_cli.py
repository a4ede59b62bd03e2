"""End-to-end tests of the `edgecl` command line through click's CliRunner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecl.cli import cli

REPORT_KEYS = {
    "edgecl_version", "profile", "strategy", "dataset", "scenario", "seed", "backend",
    "n_experiences", "accuracy_matrix", "final_accuracy", "average_accuracy", "forgetting",
    "bwt", "memory", "latency_ms", "budget", "wall_s",
}
# Keys whose values are measurements of this machine, not results of the learning.
TIMING_KEYS = {"latency_ms", "wall_s"}


def _learn(tmp_path: Path, *args: str, name: str = "r.json") -> tuple[object, dict]:
    report = tmp_path / name
    result = CliRunner().invoke(cli, ["learn", *args, "--report", str(report)])
    assert result.exit_code == 0, result.stderr + result.stdout
    return result, json.loads(report.read_text())


def _assert_one_line_error(result, exit_code: int, *needles: str) -> None:
    assert result.exit_code == exit_code, (result.exit_code, result.stderr, result.stdout)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_ar1star_learns_digits_and_naive_forgets(tmp_path):
    """The issue's acceptance run: AR1* with at most 200 latents keeps >= 0.88 of 10 classes."""
    args = ["--profile", "cpu", "--dataset", "digits", "--scenario", "class-incremental",
            "--experiences", "5", "--seed", "0"]
    result, ar1 = _learn(tmp_path, *args, "--strategy", "ar1*", name="ar1.json")
    _, naive = _learn(tmp_path, *args, "--strategy", "naive", name="naive.json")

    assert set(ar1) >= REPORT_KEYS
    assert ar1["memory"]["n_stored"] <= 200
    assert ar1["final_accuracy"] >= 0.88
    assert naive["final_accuracy"] < 0.5          # it forgets ...
    assert naive["forgetting"] > 0.5              # ... and the report shows it
    assert ar1["forgetting"] < naive["forgetting"]
    for report in (ar1, naive):  # both learn each new experience (naive then forgets it)
        assert not any("learned next to nothing" in w for w in report["warnings"])
    matrix = np.asarray(ar1["accuracy_matrix"])
    assert matrix.shape == (5, 5)
    assert ar1["final_accuracy"] == pytest.approx(matrix[-1].mean())
    for stage in ("backbone", "update", "predict"):
        assert set(ar1["latency_ms"][stage]) >= {"p50", "p95", "max"}
    assert set(ar1["memory"]) >= {"buffer_bytes", "bytes_per_sample", "n_stored", "codec",
                                  "peak_rss_mb"}
    assert set(ar1["budget"]) >= {"update_ms", "memory_mb", "n_updates", "over_budget_fraction"}
    # The table a user reads.
    for label in ("final accuracy", "forgetting", "ms/update p50 / p95 / max", "replay buffer",
                  "peak RSS"):
        assert label in result.stdout


def test_same_seed_gives_the_same_report(tmp_path):
    args = ["--dataset", "mnist1d:600", "--strategy", "ar1*", "--experiences", "3",
            "--seed", "3"]
    _, first = _learn(tmp_path, *args, name="a.json")
    _, second = _learn(tmp_path, *args, name="b.json")
    for report in (first, second):
        for key in TIMING_KEYS:
            report.pop(key)
        report["memory"].pop("peak_rss_mb")
        for key in ("over_budget_fraction", "far_over_budget_fraction", "update_latency_ms"):
            report["budget"].pop(key)
    assert first == second


def test_online_and_nic_scenarios_run(tmp_path):
    _, online = _learn(tmp_path, "--dataset", "mnist1d:400", "--scenario", "online",
                       "--strategy", "latent-replay", "--experiences", "2",
                       "--schedule", "fixed", name="o.json")
    assert 0.0 <= online["streaming_accuracy"] <= 1.0
    # One update per online sample after the first (batch) experience.
    assert online["budget"]["n_updates"] >= 100
    _, nic = _learn(tmp_path, "--dataset", "mnist1d:400", "--scenario", "nic",
                    "--strategy", "cwr*", "--experiences", "3", name="n.json")
    assert len(nic["accuracy_matrix"]) == 3


def test_scheduled_online_run_spends_a_generous_budget_on_replay(tmp_path):
    _, report = _learn(tmp_path, "--dataset", "mnist1d:400", "--scenario", "online",
                       "--strategy", "latent-replay", "--experiences", "2",
                       "--update-budget-ms", "500", "--new-share", "0.1", name="g.json")
    # Far more budget than any update needs: the scheduler replays more than the fixed
    # plan's 32 per step (up to 4x, as many as the buffer's 160 latents allow).
    assert report["budget"]["replay_per_update"] > 32
    assert report["budget"]["new_share"] == 0.1
    _assert_one_line_error(CliRunner().invoke(cli, ["learn", "--new-share", "1"]), 2,
                           "--new-share")


def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def _good_arrays(n: int = 60) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(n, 6)).astype(np.float32), "y": np.arange(n) % 3}


def test_npz_user_data_learns(tmp_path):
    _, report = _learn(tmp_path, "--dataset", _npz(tmp_path, **_good_arrays()),
                       "--experiences", "3", "--strategy", "latent-replay")
    assert report["n_experiences"] == 3


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda a: a["x"].__setitem__((3, 2), np.nan), "NaN"),
        (lambda a: a.__setitem__("y", a["y"][:-5]), "y"),
        (lambda a: a.__setitem__("y", a["y"].astype(np.float64)), "integer"),
        (lambda a: a.__setitem__("y", np.array(["cat"] * len(a["y"]))), "y"),
    ],
    ids=["nan", "mismatched-lengths", "float-labels", "string-labels"],
)
def test_bad_npz_is_a_usage_error(tmp_path, change, needle):
    arrays = _good_arrays()
    change(arrays)
    result = CliRunner().invoke(cli, ["learn", "--dataset", _npz(tmp_path, **arrays)])
    _assert_one_line_error(result, 2, needle)


def test_unknown_strategy_profile_and_malformed_profile(tmp_path):
    runner = CliRunner()
    _assert_one_line_error(runner.invoke(cli, ["learn", "--strategy", "ewc++"]), 2,
                           "unknown strategy", "ar1*")
    _assert_one_line_error(runner.invoke(cli, ["learn", "--profile", "jetson-xavier-max"]), 2,
                           "jetson-xavier-max")
    bad = tmp_path / "board.toml"
    bad.write_text('name = "board"\ndescription = "x"\n[device]\ncores = "four"\n')
    _assert_one_line_error(runner.invoke(cli, ["learn", "--profile", str(bad)]), 2,
                           "board.toml")
    _assert_one_line_error(runner.invoke(cli, ["learn", "--scenario", "sideways"]), 2,
                           "sideways")
    _assert_one_line_error(runner.invoke(cli, ["learn", "--dataset", "imagenet"]), 2,
                           "imagenet")


def test_unwritable_report_path_still_prints_results(tmp_path, monkeypatch):
    # A path that is unwritable from the start is refused before learning
    # (tests/test_cli_restart.py); this is a disk that fills up during the run.
    import errno

    import edgecl._files

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(edgecl._files, "write_atomically", disk_full)
    result = CliRunner().invoke(cli, ["learn", "--dataset", "mnist1d:300", "--experiences",
                                      "2", "--strategy", "naive", "--report",
                                      str(tmp_path / "r.json")])
    _assert_one_line_error(result, 1, "report could not be written", "No space left")
    assert "final accuracy" in result.stdout


def test_listing_commands():
    runner = CliRunner()
    strategies = runner.invoke(cli, ["strategies"])
    assert strategies.exit_code == 0
    for name in ("naive", "cumulative", "latent-replay", "cwr", "cwr*", "ar1*", "remind",
                 "exstream"):
        assert f"\n{name} " in "\n" + strategies.stdout
    profiles = runner.invoke(cli, ["profiles"])
    assert profiles.exit_code == 0
    for name in ("cpu", "arm", "rpi4", "rpi-zero2", "jetson", "jetson-nano",
                 "jetson-orin-nano"):
        assert f"\n{name} " in "\n" + profiles.stdout


def test_cuda_profile_falls_back_with_a_warning(tmp_path):
    result, report = _learn(tmp_path, "--profile", "jetson-orin-nano", "--dataset",
                            "mnist1d:300", "--experiences", "2", "--strategy", "naive")
    import torch

    if not torch.cuda.is_available():
        assert "warning:" in result.stderr and "CUDA" in result.stderr
        assert report["device"] == "cpu"


def test_backbone_saved_by_one_run_is_reused_by_the_next(tmp_path):
    weights = tmp_path / "backbone.pt"
    args = ["--dataset", "mnist1d:400", "--experiences", "2", "--strategy", "latent-replay"]
    _learn(tmp_path, *args, "--save-backbone", str(weights), name="a.json")
    assert weights.stat().st_size > 0
    _, reused = _learn(tmp_path, *args, "--backbone-weights", str(weights), name="b.json")
    assert reused["backbone_weights"] == str(weights)
    assert reused["final_accuracy"] > 0.3  # 2 experiences of 5 classes: chance is 0.1

    weights.write_bytes(b"garbage")
    result = CliRunner().invoke(cli, ["learn", *args, "--backbone-weights", str(weights)])
    _assert_one_line_error(result, 2, "backbone.pt")


def test_pq_codec_under_a_tenth_of_a_megabyte(tmp_path):
    """Issue 3's acceptance run: PQ latents in 0.1 MB, codebooks included."""
    _, report = _learn(tmp_path, "--dataset", "digits", "--codec", "pq", "--replay-mb", "0.1",
                       "--replay-samples", "0", "--strategy", "latent-replay")
    memory = report["memory"]
    assert memory["codec"] == "pq"
    assert memory["buffer_bytes"] <= 0.1 * 2**20
    # 1024-d latents: fp32 would hold (0.1 MB / 4098 B) = 25 of them; PQ holds many more.
    assert memory["bytes_per_sample"] < 4098 / 32
    assert memory["n_stored"] > 10 * 25


def test_profile_chooses_the_codec_unless_the_run_does(tmp_path):
    args = ["--dataset", "mnist1d:300", "--experiences", "2", "--strategy", "latent-replay"]
    _, board = _learn(tmp_path, *args, "--profile", "rpi4", name="rpi4.json")
    assert board["memory"]["codec"] == "uint8"
    _, chosen = _learn(tmp_path, *args, "--profile", "rpi4", "--codec", "fp16", name="f.json")
    assert chosen["memory"]["codec"] == "fp16"
    result, remind = _learn(tmp_path, *args[:-1], "remind", name="remind.json")
    assert remind["memory"]["codec"] == "pq"  # the method's own codec beats the profile's
    # 120 first-experience latents cannot fit 256 centroids: the run degrades and says so.
    assert any("fewer than the 256 centroids" in w for w in remind["warnings"])
    assert "warning: codec pq" in result.stderr


def test_rpi_zero2_default_codec_is_not_pq_where_its_codebooks_backfire(tmp_path):
    """rpi-zero2 asks for pq, but 200 latents in uint8 take a fifth of pq's bytes."""
    args = ["--profile", "rpi-zero2", "--dataset", "mnist1d:300", "--experiences", "2",
            "--strategy", "latent-replay"]
    result, chosen = _learn(tmp_path, *args, name="z.json")
    memory = chosen["memory"]
    assert memory["codec"] == "uint8"
    choice = memory["codec_choice"]
    assert choice["from"] == "profile rpi-zero2" and choice["preferred"] == "pq"
    fits = {c["codec"]: c for c in choice["candidates"]}
    assert fits["pq"]["latents"] == fits["uint8"]["latents"] == 200
    assert fits["pq"]["bytes"] > fits["uint8"]["bytes"] == memory["buffer_bytes"]
    assert "warning: replay codec uint8 instead of the profile's pq" in result.stderr
    _, forced = _learn(tmp_path, *args, "--codec", "pq", name="pq.json")
    assert forced["memory"]["codec"] == "pq"
    assert forced["memory"]["codec_choice"] == {"from": "--codec", "codec": "pq"}
    # Bytes only (no sample cap): pq stores many more latents than uint8, so pq it is.
    _, unbounded = _learn(tmp_path, *args, "--replay-samples", "0", name="u.json")
    assert unbounded["memory"]["codec"] == "pq"


def test_figures_of_another_device_say_where_they_were_measured(tmp_path):
    """A board profile: latency measured here beside the roofline's prediction for the
    board, and peak RSS checked against the board's RAM."""
    board = (Path(__file__).parents[1] / "edgecl/firmware_profiles/rpi-zero2.toml").read_text()
    board = board.replace('name = "rpi-zero2"', 'name = "tiny-board"')
    board = board.replace("ram_mb = 512 ", "ram_mb = 160 ")  # any Python + torch is over half
    (tmp_path / "tiny-board.toml").write_text(board)
    args = ["--dataset", "mnist1d:300", "--experiences", "2", "--strategy", "naive"]
    result, report = _learn(tmp_path, *args, "--profile", str(tmp_path / "tiny-board.toml"))
    prediction = report["device_prediction"]
    assert prediction["other_device"] and prediction["profile"] == "tiny-board"
    assert prediction["update_ms"] > 0 and "roofline prediction" in prediction["what"]
    table = result.stdout
    assert "(measured here; budget" in table
    line = next(x for x in table.splitlines() if x.startswith("ms/update on tiny-board"))
    assert f" {prediction['update_ms']:.2f} predicted, not measured (roofline:" in line
    assert "measured here (tiny-board has 160 MB of RAM)" in table
    ram = [w for w in report["warnings"] if "160 MB of RAM" in w]
    assert len(ram) == 1 and "peak RSS measured here" in ram[0]
    assert "warning: peak RSS measured here" in result.stderr

    here, own = _learn(tmp_path, *args, name="cpu.json")
    assert not own["device_prediction"]["other_device"]
    assert "measured here" not in here.stdout and "ms/update on" not in here.stdout
    assert not any("MB of RAM" in w for w in own["warnings"])  # 16 GB


def test_cwr_star_that_learns_nothing_on_an_experience_says_why(tmp_path):
    """CWR* on digits: after the first experience only the output layer learns, and
    experience 2 ends below chance on its own test set."""
    result, report = _learn(tmp_path, "--dataset", "digits", "--strategy", "cwr*")
    warnings = [w for w in report["warnings"] if "learned next to nothing" in w]
    assert len(warnings) == 1, report["warnings"]
    assert "only the output layer learns" in warnings[0]
    assert "--strategy 'ar1*'" in warnings[0] and "--backbone-weights" in warnings[0]
    assert "warning: cwr* learned next to nothing on experience" in result.stderr
