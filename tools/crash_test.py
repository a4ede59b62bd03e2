"""Crash test: kill ``edgecl learn`` with SIGKILL again and again, resume it, compare the end.

    python tools/crash_test.py                 # 50 kills, 3 to 6 minutes on 2 busy cores
    python tools/crash_test.py --kills 3       # a smoke test
    python tools/crash_test.py --kills 200 --seed 7 --workdir /tmp/ct --keep

An uninterrupted reference run comes first. Then the same run is started with checkpoints
after every update, killed with SIGKILL, restarted, killed again, and so on, until the
requested number of kills has landed; the last start runs to the end. Every start is the same
command line with ``--resume``, as a service manager would restart it, also before the first
checkpoint exists. Its JSON report must equal the reference's, timing fields aside, and count
as many checkpoints as the reference's.

Where the kills land:
- ``write`` kills wait until a checkpoint write begins (a ``.tmp-`` directory appears in
  the checkpoint directory), then kill within ``--write-jitter`` (30 ms), mostly mid-write;
- ``random`` kills land a random moment after a random amount of progress;
- ``startup`` kills land in the first seconds: imports, data loading, the restore itself;
  the first kill is one, so a restart before any checkpoint exists is tested too.
Whether a kill really hit a write is read from the disk afterwards: a ``.tmp-`` directory
left behind (``.old-``: while deleting an old checkpoint).

After every kill ``edgecl.runtime.checkpoint.load_checkpoint`` must load the newest
checkpoint with nothing skipped (a kill must never damage one), and the newest step must
not go backwards. The exit status is non-zero on any failure: a resume that fails, a
checkpoint that does not load, a report that differs, a start that hangs, or fewer kills
than asked for because the run finished first.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecl.profiles import load_profile
from edgecl.runtime.checkpoint import list_checkpoints, load_checkpoint

# Fields that measure this machine or this process, not what was learned (as in
# tests/runtime/test_run_resume.py); budget.n_updates is compared on its own.
VOLATILE = {"wall_s", "latency_ms", "checkpoints", "budget"}
VOLATILE_MEMORY = {"peak_rss_mb"}
_CLI = "import sys; from edgecl.cli import cli; sys.exit(cli(prog_name='edgecl'))"
_POLL_S = 0.001


@dataclass
class Tally:
    kills: int = 0
    during_write: int = 0      # a .tmp- directory was left behind
    during_cleanup: int = 0    # an .old- directory was left behind
    write_stage: dict[str, int] = field(default_factory=dict)  # how far the write had got
    before_first: int = 0      # no checkpoint existed yet when the kill landed
    by_mode: dict[str, int] = field(default_factory=dict)
    starts: int = 0
    resume_failures: list[str] = field(default_factory=list)
    bad_checkpoints: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


def _profile_file(directory: Path, threads: int) -> Path:
    """The built-in cpu profile with ``threads`` threads, as a file the CLI can load."""
    cpu = load_profile("cpu")
    name = f"cpu-{threads}t"
    device = dict(vars(cpu.device), threads=threads, cores=max(threads, cpu.device.cores))
    lines = [f"name = {json.dumps(name)}",
             f"description = {json.dumps(f'{cpu.description}, {threads} thread(s)')}",
             "[device]", *(f"{k} = {_toml(v)}" for k, v in device.items()),
             "[budget]", *(f"{k} = {_toml(v)}" for k, v in vars(cpu.budget).items())]
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    load_profile(path)  # fail here, not in every child, if the file is wrong
    return path


def _toml(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _learn_command(args: argparse.Namespace, profile: Path, checkpoint: Path,
                   report: Path) -> list[str]:
    command = [sys.executable, "-c", _CLI, "learn", "--profile", str(profile),
               "--dataset", args.dataset, "--scenario", "online",
               "--online-batch-size", str(args.online_batch_size),
               "--experiences", str(args.experiences), "--strategy", args.strategy,
               "--seed", str(args.seed), "--checkpoint", str(checkpoint),
               "--checkpoint-every", str(args.checkpoint_every), "--report", str(report)]
    if _has_flag("--schedule"):  # the update scheduler: a fixed plan keeps runs reproducible
        command += ["--schedule", "fixed"]
    return command


@functools.cache
def _has_flag(flag: str) -> bool:
    out = subprocess.run([sys.executable, "-c", _CLI, "learn", "--help"], capture_output=True,
                         text=True, env=_child_env(), check=True).stdout
    return flag in out


def _child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _scan(directory: Path) -> tuple[int, set[str]]:
    """(newest checkpoint step or 0, names of .tmp-/.old- leftovers) as on disk now."""
    newest, leftovers = 0, set()
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith("step-") and name[5:].isdigit():
                    newest = max(newest, int(name[5:]))
                elif name.startswith((".tmp-", ".old-")):
                    leftovers.add(name)
    except FileNotFoundError:
        pass
    return newest, leftovers


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _stable(report: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in report.items() if k not in VOLATILE}
    out["memory"] = {k: v for k, v in report["memory"].items() if k not in VOLATILE_MEMORY}
    out["budget.n_updates"] = report["budget"]["n_updates"]
    out["checkpoints.n_saved"] = report["checkpoints"]["n_saved"]  # over all the starts
    return out


def _differences(got: Any, want: Any, where: str = "") -> list[str]:
    if isinstance(got, dict) and isinstance(want, dict):
        out = []
        for key in sorted(got.keys() | want.keys()):
            out += _differences(got.get(key), want.get(key), f"{where}.{key}" if where else key)
        return out
    if got != want and not (got != got and want != want):  # NaN == NaN here
        return [f"{where}: {str(got)[:80]} != {str(want)[:80]}"]
    return []


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_reference(args: argparse.Namespace, work: Path, profile: Path) -> tuple[dict, int]:
    report = work / "reference.json"
    command = _learn_command(args, profile, work / "reference-ck", report)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=_child_env())
    if done.returncode != 0:
        raise SystemExit(f"the reference run failed: {_last_line(done.stderr)}")
    data = json.loads(report.read_text())
    n_checkpoints = int(data["checkpoints"]["n_saved"])
    _log(f"reference run: {n_checkpoints} checkpoints, {time.monotonic() - started:.1f} s")
    return data, n_checkpoints


def _one_start(args: argparse.Namespace, command: list[str], directory: Path,
               rng: random.Random, tally: Tally, total_steps: int) -> str:
    """Start (or resume) the run and kill it once, if kills are left. Returns "killed",
    "done" (it finished by itself), "failed" (it exited non-zero by itself) or "hang"."""
    step_before, leftovers_before = _scan(directory)
    had_checkpoint = bool(list_checkpoints(directory))
    kills_left = args.kills - tally.kills
    mode: str | None = None
    if kills_left > 0:
        roll = rng.random()
        mode = ("startup" if roll < args.startup_share or tally.starts == 0 else
                "write" if roll < args.startup_share + args.write_share else "random")
        # Spread the remaining progress evenly over the remaining kills, at random.
        average = max(0, total_steps - step_before) / (kills_left + 1)
        target = step_before + rng.randint(0, int(2 * average))
    else:
        target = 0
    tally.starts += 1
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(command + ["--resume"],
                                stdout=subprocess.DEVNULL, stderr=log, env=_child_env())
        try:
            killed_at = _watch(args, proc, directory, rng, mode, target, leftovers_before)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        log.seek(0)
        stderr = log.read()
    if killed_at == "timeout":
        tally.hangs.append(f"start {tally.starts} ran over {args.start_timeout:g} s")
        return "hang"
    if killed_at is None:  # the run ended by itself
        if proc.returncode == 0:
            return "done"
        tally.resume_failures.append(f"start {tally.starts} (a checkpoint existed: "
                                     f"{had_checkpoint}) exited {proc.returncode}: "
                                     f"{_last_line(stderr)}")
        return "failed"
    tally.kills += 1
    tally.by_mode[killed_at] = tally.by_mode.get(killed_at, 0) + 1
    step_after, leftovers_after = _scan(directory)
    new = leftovers_after - leftovers_before
    tally.during_write += any(n.startswith(".tmp-") for n in new)
    for name in sorted(n for n in new if n.startswith(".tmp-")):
        stage = _write_stage(directory / name)
        tally.write_stage[stage] = tally.write_stage.get(stage, 0) + 1
    tally.during_cleanup += any(n.startswith(".old-") for n in new)
    _check_after_kill(directory, tally, step_before, step_after)
    _log(f"kill {tally.kills:>3}/{args.kills} ({killed_at:<7}) at step {step_after:>4} of "
         f"~{total_steps}, {time.monotonic() - started:5.2f} s after start"
         f"{', mid-write' if any(n.startswith('.tmp-') for n in new) else ''}")
    return "killed"


def _watch(args: argparse.Namespace, proc: subprocess.Popen, directory: Path,
           rng: random.Random, mode: str | None, target: int,
           leftovers_before: set[str]) -> str | None:
    """Poll the run and the checkpoint directory until it is time to kill (returns how the
    kill was aimed, or "timeout"), or until the run ends by itself (returns None)."""
    started = time.monotonic()
    startup_kill = started + rng.uniform(0.0, args.startup_seconds)
    jitter_until = None
    while proc.poll() is None:
        now = time.monotonic()
        if now - started > args.start_timeout:
            return "timeout"
        armed = False
        if mode is not None:
            step, leftovers = _scan(directory)
            armed = step >= target
            if mode == "startup" and now >= startup_kill:
                return mode
            if mode == "write" and armed and any(name.startswith(".tmp-")
                                                 for name in leftovers - leftovers_before):
                # Log-uniform from 1/1000 of the jitter up: early, mid or late in the write.
                time.sleep(args.write_jitter * 10 ** rng.uniform(-3.0, 0.0))
                return mode
            if mode == "random" and armed:
                jitter_until = jitter_until or now + rng.uniform(0.0, args.random_jitter)
                if now >= jitter_until:
                    return mode
        # Waiting for a write to begin: poll fast, since one lasts a few milliseconds.
        time.sleep(_POLL_S / 5 if armed and mode == "write" else _POLL_S)
    return None


def _write_stage(tmp: Path) -> str:
    """How far a killed checkpoint write had got, from what it left behind."""
    files = {p.name for p in tmp.iterdir()} if tmp.is_dir() else set()
    if "manifest.json" in files:
        return "both files written, not yet renamed"
    if "tensors.pt" in files:
        return "writing the tensors"
    return "directory only"


def _check_after_kill(directory: Path, tally: Tally, step_before: int, step_after: int) -> None:
    """A valid checkpoint survived every kill: the newest loads, with nothing skipped."""
    if not list_checkpoints(directory):
        tally.before_first += 1
        if step_before:
            tally.bad_checkpoints.append(f"kill {tally.kills}: every checkpoint is gone")
        return
    try:
        checkpoint = load_checkpoint(directory)
    except Exception as error:  # any failure to load is what this looks for
        tally.bad_checkpoints.append(f"kill {tally.kills}: {type(error).__name__}: {error}")
        return
    if checkpoint.skipped:
        tally.bad_checkpoints.append(f"kill {tally.kills}: damaged: {checkpoint.skipped}")
    if checkpoint.step != step_after or step_after < step_before:
        tally.bad_checkpoints.append(f"kill {tally.kills}: newest step {checkpoint.step}, was "
                                     f"{step_before} before the start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs to land (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule and run")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to put checkpoints and reports (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--strategy", default="ar1*")
    parser.add_argument("--experiences", type=int, default=3)
    parser.add_argument("--online-batch-size", type=int, default=8)
    parser.add_argument("--checkpoint-every", type=int, default=1)
    parser.add_argument("--write-share", type=float, default=0.45,
                        help="share of kills aimed at checkpoint writes (default 0.45)")
    parser.add_argument("--startup-share", type=float, default=0.1,
                        help="share of kills in the first --startup-seconds (default 0.1)")
    parser.add_argument("--startup-seconds", type=float, default=3.0)
    parser.add_argument("--write-jitter", type=float, default=0.03,
                        help="seconds, at most, between seeing a write begin and the kill "
                             "(log-uniform from a thousandth of it; default 0.03)")
    parser.add_argument("--random-jitter", type=float, default=0.3,
                        help="seconds, at most, between the target progress and the kill")
    parser.add_argument("--start-timeout", type=float, default=300.0,
                        help="a start that runs longer than this is a hang")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.kills < 0:
        parser.error("--kills must be >= 0")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgecl-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    directory = work / "ck"
    for used in (directory, work / "reference-ck"):
        if used.exists() and any(used.iterdir()):
            parser.error(f"{used} is not empty; choose another --workdir")
    rng = random.Random(args.seed)
    started = time.monotonic()
    profile = _profile_file(work, args.threads)
    reference, total_steps = _run_reference(args, work, profile)
    report_path = work / "crashed.json"
    report_path.unlink(missing_ok=True)
    command = _learn_command(args, profile, directory, report_path)
    tally = Tally()
    # A start that fails or hangs is recorded and retried, a few times at most.
    outcome, retries = "killed", 0
    while outcome != "done" and retries <= 3:
        outcome = _one_start(args, command, directory, rng, tally, total_steps)
        retries += outcome in ("failed", "hang")

    if outcome != "done":
        tally.mismatches.append("the crashed run never finished")
    else:
        got = _stable(json.loads(report_path.read_text()))
        tally.mismatches += _differences(got, _stable(reference))
    failures = (tally.resume_failures + tally.bad_checkpoints + tally.hangs + tally.mismatches)
    if tally.kills < args.kills:
        failures.append(f"only {tally.kills} of {args.kills} kills landed before the run "
                        "finished; use a longer stream (--experiences, --online-batch-size)")
    figures = {
        "kills_requested": args.kills, "kills_survived": tally.kills,
        "kills_during_checkpoint_writes": tally.during_write,
        "kills_during_old_checkpoint_removal": tally.during_cleanup,
        "write_stage_at_kill": tally.write_stage,
        "kills_before_the_first_checkpoint": tally.before_first,
        "kills_by_mode": tally.by_mode, "starts": tally.starts,
        "resume_failures": tally.resume_failures, "invalid_checkpoints": tally.bad_checkpoints,
        "hangs": tally.hangs, "mismatches": tally.mismatches,
        "checkpoints_in_reference": total_steps, "seed": args.seed,
        "wall_s": round(time.monotonic() - started, 1), "passed": not failures,
    }
    print(f"crash test: {args.strategy} on {args.dataset}, online, {args.experiences} "
          f"experiences, batch {args.online_batch_size}, a checkpoint every "
          f"{args.checkpoint_every} update(s) ({total_steps} in the reference run), seed "
          f"{args.seed}, "
          f"{'--schedule fixed' if _has_flag('--schedule') else 'no --schedule flag'}")
    print(f"  kills survived                 {tally.kills} of {args.kills} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(tally.by_mode.items()))})")
    print(f"  kills during checkpoint writes {tally.during_write} (.tmp- left behind); "
          f"{tally.during_cleanup} while removing an old one; {tally.before_first} before the "
          "first checkpoint")
    for stage, count in sorted(tally.write_stage.items()):
        print(f"    {stage:<35} {count}")
    print(f"  starts                         {tally.starts}")
    print(f"  resume failures                {len(tally.resume_failures)}")
    print(f"  invalid checkpoints after kill {len(tally.bad_checkpoints)}")
    print(f"  hangs                          {len(tally.hangs)}")
    print(f"  report mismatches              {len(tally.mismatches)}")
    for line in failures:
        print(f"  FAIL: {line}")
    print(f"  result                         {'PASS' if not failures else 'FAIL'} "
          f"({figures['wall_s']:.0f} s; work directory {work}"
          f"{'' if args.keep or args.workdir else ', removed'})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if not args.keep and args.workdir is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
