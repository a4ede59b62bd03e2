"""The ``edgecl`` command line: ``learn``, ``export``, ``profile``, ``strategies``, ``profiles``.

Exit codes: 0 success, 1 runtime failure, 2 usage error (bad flag, file, name or profile).
Errors print one line on stderr; ``edgecl --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from edgecl.errors import EdgeclError, UsageError
from edgecl.memory.codecs import list_codecs


class _LineError(click.ClickException):
    """One line on stderr with a chosen exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(" ".join(str(message).split()))
        self.exit_code = exit_code


class EdgeclGroup(click.Group):
    """Turns every error into one line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.UsageError as error:  # bad flag or value, found by click
            if debug:
                raise
            hint = f" (see 'edgecl {error.ctx.info_name} --help')" if error.ctx else ""
            raise _LineError(error.format_message() + hint, 2) from None
        except click.ClickException:
            raise
        except UsageError as error:
            if debug:
                raise
            raise _LineError(str(error), 2) from None
        except EdgeclError as error:
            if debug:
                raise
            raise _LineError(str(error), 1) from None
        except Exception as error:  # a bug: still one line, with the way to see more
            if debug:
                raise
            raise _LineError(f"internal error: {type(error).__name__}: {error} "
                             "(rerun with 'edgecl --debug ...' for the traceback)", 1) from None


@click.group(cls=EdgeclGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="edgecl")
def cli(debug: bool) -> None:
    """Continual learning on edge devices: learn a changing stream inside a device's budget."""


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    from edgecl._files import write_atomically

    write_atomically(path, json.dumps(data, indent=2, allow_nan=True).encode("utf-8"))


def _fmt_acc(value: float) -> str:
    return "  -  " if value != value else f"{value:.3f}"  # NaN: empty test set


def _print_table(report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    echo = click.echo
    echo(f"\n{report['strategy']} on {report['dataset']} ({report['scenario']}, "
         f"{report['n_experiences']} experiences), profile {report['profile']}, "
         f"seed {report['seed']}")
    final_row = report["accuracy_matrix"][-1]
    echo(f"\n{'exp':>3}  {'classes':<12} {'acc. on seen':>12} {'final acc.':>10}")
    for row in rows:
        classes = ",".join(str(c) for c in row["classes"])
        classes = classes if len(classes) <= 12 else classes[:11] + "…"
        echo(f"{row['index']:>3}  {classes:<12} {_fmt_acc(row['seen_accuracy']):>12} "
             f"{_fmt_acc(final_row[row['index']]):>10}")
    memory, budget, upd = report["memory"], report["budget"], report["latency_ms"]["update"]
    device = report.get("device_prediction") or {}
    here = "measured here; " if device.get("other_device") else ""
    lines = [
        ("final accuracy", _fmt_acc(report["final_accuracy"])),
        ("test accuracy (all classes)", _fmt_acc(report["test_accuracy"])),
        ("average accuracy", _fmt_acc(report["average_accuracy"])),
        ("forgetting", f"{report['forgetting']:.3f}"),
        ("backward transfer", f"{report['bwt']:+.3f}"),
    ]
    if report.get("streaming_accuracy") is not None:
        lines.append(("streaming accuracy", _fmt_acc(report["streaming_accuracy"])))
    lines += [
        ("ms/update p50 / p95 / max", f"{upd['p50']:.2f} / {upd['p95']:.2f} / "
         f"{upd['max']:.1f}  ({here}budget {budget['update_ms']:g} ms, "
         f"{100 * budget['over_budget_fraction']:.1f}% of {budget['n_updates']} over, "
         f"{100 * budget['far_over_budget_fraction']:.1f}% over by >20%)"),
        *_device_lines(device),
        ("replay per update", f"{budget['replay_per_update']:.1f} latents"
         + (f" (scheduled: {_schedule_summary(budget['scheduler'])})"
            if "scheduler" in budget else " (fixed plan)")
         + (f"; new data {budget['new_share']:.2g} of the loss"
            if budget.get("new_share") is not None else "")),
        ("memory in use / budget", f"{budget['memory_used_bytes']:,} / "
         f"{budget['memory_budget_bytes']:,} bytes (replay + strategy state)"
         if budget.get("memory_budget_bytes") else "no memory budget"),
        ("replay buffer", f"{memory['n_stored']} latents, {memory['buffer_bytes']:,} bytes "
         f"({memory['bytes_per_sample']:,} B each, {memory['codec']})"),
        ("backbone runs on", f"{report['backend']} "
                             f"({report['backend_info']['execution_provider']})"),
        ("peak RSS", f"{memory['peak_rss_mb']:.1f} MB"
         + (f" measured here ({report['profile']} has "
            f"{report['profile_details']['device']['ram_mb']:,} MB of RAM)" if here else "")),
        ("wall time", f"{report['wall_s']:.1f} s" + (" measured here" if here else "")),
    ]
    if budget.get("learning_stalled"):
        lines.append(("learning stalled", budget["scheduler"]["stall_advice"]
                      .removeprefix("learning stalled: ")))
    echo("")
    for label, value in lines:
        echo(f"{label:<28} {value}")


def _device_lines(device: dict[str, Any]) -> list[tuple[str, str]]:
    """The roofline's prediction for the profile's device, beside the figures measured
    here, when the profile describes another device."""
    if not device.get("other_device"):
        return []
    rates = device["rates"]
    return [(f"ms/update on {device['profile']}",
             f"{device['update_ms']:.2f} predicted, not measured (roofline: "
             f"{rates['gflops']:g} GFLOP/s, {rates['bandwidth_gbs']:g} GB/s)")]


def _schedule_summary(stats: dict[str, Any]) -> str:
    parts = [f"{stats['mean_steps']:.2f} steps/update"]
    if stats["n_deferred_total"]:
        parts.append(f"{stats['n_deferred_total']} samples deferred, "
                     f"{stats['n_dropped_total']} dropped")
    if stats["n_backbone_over_budget"]:
        parts.append(f"backbone alone over budget {stats['n_backbone_over_budget']} times")
    if stats.get("stolen_share", 0) >= 0.01:
        parts.append(f"other processes took {stats['stolen_share']:.0%} of update time")
    threads = stats.get("threads") or {}
    if threads.get("reduced_fraction"):
        parts.append(f"{threads['reduced_fraction']:.0%} of updates on 1 of "
                     f"{threads['threads']} threads")
    return ", ".join(parts)


@cli.command("learn")
@click.option("--profile", "profile", default="cpu", show_default=True,
              help="Device profile: a name from 'edgecl profiles' or a path to a .toml file.")
@click.option("--dataset", default="digits", show_default=True,
              help="digits, mnist1d, mnist1d:N (N samples), mnist5k, or npz:PATH with arrays "
                   "x, y (optional x_test, y_test).")
@click.option("--scenario", default="class-incremental", show_default=True,
              type=click.Choice(["class-incremental", "nic", "online"]),
              help="How the dataset is cut into a stream of experiences.")
@click.option("--strategy", default="ar1*", show_default=True,
              help="A registered strategy; list them with 'edgecl strategies'.")
@click.option("--experiences", "n_experiences", default=5, show_default=True, type=int,
              help="Number of experiences the stream is cut into.")
@click.option("--memory-mb", type=float, default=None,
              help="Memory budget in MB for the replay buffer plus the strategy's own state "
                   "(SI importances, consolidated weights, stored latents); a strategy whose "
                   "state does not fit refuses to start [default: the profile's memory_mb].")
@click.option("--replay-mb", type=float, default=None,
              help="Replay buffer budget in MB, within --memory-mb [default: the profile's "
                   "replay_mb].")
@click.option("--replay-samples", type=int, default=200, show_default=True,
              help="Replay buffer capacity in latents, within --replay-mb; 0 for bytes only.")
@click.option("--codec", default=None, type=click.Choice(list_codecs()),
              help="How replayed latents are stored [default: the strategy's own codec "
                   "(remind: pq), else the profile's replay_codec or a less lossy one, "
                   "whichever stores the planned latents in the fewest bytes].")
@click.option("--quantize-eval/--no-quantize-eval", default=None,
              help="Pass test latents through the replay codec, so the head sees them as it "
                   "sees replayed ones [default: on for remind and for the coarse codecs pq "
                   "and opq].")
@click.option("--update-budget-ms", type=float, default=None,
              help="Latency budget of one update in ms [default: the profile's update_ms].")
@click.option("--schedule", default="budget", show_default=True,
              type=click.Choice(["budget", "fixed"]),
              help="budget: size each streaming update (replay, optimizer steps, subsampling) "
                   "to fit --update-budget-ms, from a cost model corrected by measured times; "
                   "fixed: the configured replay and one step, so that runs are reproducible "
                   "bit for bit (timings then only report the budget).")
@click.option("--max-replay-per-step", type=int, default=None,
              help="Most replayed latents per step the budget scheduler may spend a generous "
                   "budget on [default: 4x the strategy's fixed replay].")
@click.option("--max-steps", type=int, default=1, show_default=True,
              help="Let the budget scheduler take up to this many optimizer steps per update.")
@click.option("--new-share", type=float, default=None,
              help="Share of a streaming step's loss given to its new samples, the replayed "
                   "ones sharing the rest; it stays the same however many the scheduler "
                   "replays [default: the strategy's (ar1*: 0.25), else the fixed plan's, "
                   "1/33].")
@click.option("--sleep-ms", type=float, default=0.0, show_default=True,
              help="Idle time after each experience for sleep consolidation: deferred "
                   "samples, then more replay (with --schedule budget).")
@click.option("--backend", default="torch", show_default=True,
              type=click.Choice(["torch", "ort", "ort-int8"]),
              help="Where the frozen backbone runs: PyTorch, or ONNX Runtime in fp32 or int8 "
                   "(statically quantized, calibrated on the first experience) with the "
                   "profile's execution providers; the head always trains in PyTorch.")
@click.option("--online-batch-size", default=1, show_default=True, type=int,
              help="Samples per update in the online scenario.")
@click.option("--backbone-weights", type=click.Path(dir_okay=False), default=None,
              help="Load a pretrained network (from --save-backbone or Learner.save_backbone) "
                   "instead of pretraining on the first experience.")
@click.option("--save-backbone", type=click.Path(dir_okay=False), default=None,
              help="Write the network's weights here at the end, for --backbone-weights.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed for the split, initialisation and replay; same seed, same report.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the JSON report here.")
@click.option("--checkpoint", "checkpoint_dir", type=click.Path(file_okay=False), default=None,
              help="Save checkpoints in this directory (atomic; the previous good one is kept "
                   "until a new one is complete).")
@click.option("--checkpoint-every", type=int, default=50, show_default=True,
              help="Updates between checkpoints; one is also saved after every experience.")
@click.option("--checkpoint-seconds", type=float, default=None,
              help="Also save a checkpoint when this many seconds have passed since the last.")
@click.option("--resume", is_flag=True,
              help="Continue from the newest valid checkpoint in --checkpoint DIR; the run "
                   "ends with the same results as one that was never stopped.")
def learn_command(profile: str, dataset: str, scenario: str, strategy: str, n_experiences: int,
                  memory_mb: float | None, replay_mb: float | None, replay_samples: int,
                  codec: str | None,
                  quantize_eval: bool | None,
                  update_budget_ms: float | None, schedule: str,
                  max_replay_per_step: int | None, max_steps: int,
                  new_share: float | None, sleep_ms: float,
                  backend: str, online_batch_size: int,
                  backbone_weights: str | None, save_backbone: str | None, seed: int,
                  report_path: Path | None, checkpoint_dir: str | None, checkpoint_every: int,
                  checkpoint_seconds: float | None, resume: bool) -> None:
    """Learn a stream with a strategy, show progress, print a results table.

    The backbone is pretrained on the first experience and frozen below its latent layer;
    the head then learns each experience from new and replayed latents.

    \b
    Example:
      edgecl learn --profile cpu --dataset digits --strategy ar1* --report r.json
    """
    from edgecl._files import check_writable_file
    from edgecl._interrupt import stop_on_signals
    from edgecl.runtime.run import RunSpec, iter_run
    from edgecl.strategies import STRATEGIES

    STRATEGIES.get(strategy)  # an unknown name fails before any data is loaded
    if replay_samples < 0:
        raise UsageError(f"--replay-samples must be >= 0, got {replay_samples}")
    for flag, value in (("--memory-mb", memory_mb), ("--replay-mb", replay_mb)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    if update_budget_ms is not None and not update_budget_ms > 0:
        raise UsageError(f"--update-budget-ms must be positive, got {update_budget_ms}")
    if online_batch_size < 1:
        raise UsageError(f"--online-batch-size must be >= 1, got {online_batch_size}")
    if max_replay_per_step is not None and max_replay_per_step < 0:
        raise UsageError(f"--max-replay-per-step must be >= 0, got {max_replay_per_step}")
    if max_steps < 1:
        raise UsageError(f"--max-steps must be >= 1, got {max_steps}")
    if new_share is not None and not 0 < new_share < 1:
        raise UsageError(f"--new-share must be between 0 and 1 (exclusive), got {new_share}")
    if not sleep_ms >= 0:
        raise UsageError(f"--sleep-ms must be >= 0, got {sleep_ms}")
    if checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    if checkpoint_seconds is not None and not checkpoint_seconds > 0:
        raise UsageError(f"--checkpoint-seconds must be positive, got {checkpoint_seconds}")
    if resume and checkpoint_dir is None:
        raise UsageError("--resume needs --checkpoint DIR (where the checkpoints are)")
    spec = RunSpec(profile=profile, dataset=dataset, scenario=scenario, strategy=strategy,
                   n_experiences=n_experiences, seed=seed, memory_mb=memory_mb, replay_mb=replay_mb,
                   replay_samples=replay_samples or None, codec=codec,
                   quantize_eval=quantize_eval,
                   update_budget_ms=update_budget_ms, schedule=schedule,
                   max_replay_per_step=max_replay_per_step, max_steps=max_steps,
                   new_share=new_share, sleep_ms=sleep_ms, backend=backend,
                   online_batch_size=online_batch_size, backbone_weights=backbone_weights,
                   save_backbone=save_backbone, checkpoint_dir=checkpoint_dir,
                   checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                   resume=resume)
    if report_path is not None:  # found now, not after minutes of learning
        check_writable_file(report_path, "--report")
    with stop_on_signals() as stop:
        events = iter_run(spec, stop=stop)
        try:
            report, rows, stopped = _follow(events, strategy)
        except KeyboardInterrupt:  # a second signal, or Ctrl-C where no handler could be set
            events.close()
            click.echo(f"\naborted at once; {_resume_hint(checkpoint_dir)}", err=True)
            raise click.exceptions.Exit(stop.abort_exit_code) from None
    if stopped is not None:
        where = (f"--resume will continue from {stopped['checkpoint']}" if stopped["checkpoint"]
                 else "nothing was saved (no --checkpoint)" if checkpoint_dir is None
                 else "nothing was learned yet, so nothing was saved")
        click.echo(f"stopped by {stop.name} after {stopped['samples_done']:,} of "
                   f"{stopped['total_samples']:,} samples; {where}; no report: it is written "
                   "when the run ends", err=True)
        raise click.exceptions.Exit(stop.exit_code)
    _print_table(report, rows)
    if report_path is not None:
        try:
            _write_json_atomically(report_path, report)
        except OSError as error:
            raise EdgeclError(f"the run finished but the report could not be written to "
                              f"{report_path}: {error.strerror or error}") from None
        click.echo(f"{'report':<28} {report_path}")


def _follow(events: Iterator[dict[str, Any]], strategy: str
            ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    """Show a run's progress; its report, its table rows (earlier parts of a resumed run
    included) and its "stopped" event, if it was stopped."""
    start = next(events)
    for warning in start["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if start.get("resumed_from"):
        click.echo(f"resumed from {start['resumed_from']} ({start['resumed_at']} samples "
                   "already learned)", err=True)
    rows: list[dict[str, Any]] = list(start.get("experiences_done", []))
    report: dict[str, Any] = {}
    stopped = None
    with click.progressbar(length=start["total_samples"], label=f"learning ({strategy})",
                           file=sys.stderr, show_pos=True,
                           hidden=not sys.stderr.isatty()) as bar:
        bar.update(start.get("resumed_at") or 0)
        for event in events:
            if event["event"] == "progress":
                bar.update(event["samples"])
                for warning in event["warnings"]:
                    click.echo(f"\nwarning: {warning}", err=True)
            elif event["event"] == "experience":
                rows.append(event)
            elif event["event"] == "stopped":
                stopped = {**event, "total_samples": start["total_samples"]}
            elif event["event"] == "done":
                report = event["report"]
    return report, rows, stopped


def _resume_hint(checkpoint_dir: str | None) -> str:
    """Which checkpoint --resume would use now, read from the disk."""
    if checkpoint_dir is None:
        return "nothing was saved (no --checkpoint)"
    from edgecl.runtime.checkpoint import list_checkpoints

    intact = [c.path for c in list_checkpoints(checkpoint_dir) if c.problem is None]
    return (f"--resume will continue from {intact[-1]}" if intact
            else "no checkpoint was saved yet")


def _shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(d) for d in value.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"--input-shape must be like 3,128,128 or 64, got {value!r}") from None
    if not shape or min(shape) < 1:
        raise UsageError(f"--input-shape must be positive sizes, got {value!r}")
    return shape


@cli.command("export")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The .onnx file to write (with --quantize int8 the int8 model; the fp32 one "
                   "is kept beside it as NAME-fp32.onnx).")
@click.option("--backbone", default=None,
              help="A built-in backbone (mlp, cnn, mobilenet), sized for --dataset or "
                   "--input-shape.")
@click.option("--from-checkpoint", "from_checkpoint", type=click.Path(file_okay=False),
              default=None, help="Export what a run learned: the checkpoint directory of "
                                 "'edgecl learn --checkpoint DIR'.")
@click.option("--part", default="frozen", show_default=True,
              type=click.Choice(["frozen", "head", "full"]),
              help="The frozen backbone (raw input to latent), the head (latent to class "
                   "scores) or the whole inference model.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Also quantize to int8 (static, calibrated on samples from --dataset) and "
                   "report the accuracy change on its test set.")
@click.option("--dataset", default=None,
              help="Data for the parity check, calibration and accuracy [default: the "
                   "checkpoint's dataset, else digits].")
@click.option("--backbone-weights", type=click.Path(dir_okay=False), default=None,
              help="Trained weights for --backbone (from 'edgecl learn --save-backbone').")
@click.option("--input-shape", default=None,
              help="Per-sample input shape for --backbone without a dataset, e.g. 3,128,128.")
@click.option("--classes", "n_classes", type=int, default=None,
              help="Number of classes for --backbone [default: the dataset's, else 10].")
def export_command(out: str, backbone: str | None, from_checkpoint: str | None, part: str,
                   quantize: str | None, dataset: str | None, backbone_weights: str | None,
                   input_shape: str | None, n_classes: int | None) -> None:
    """Write a backbone, a learned head or the whole model as ONNX and check it.

    The exported file has a dynamic batch dimension; it is run in ONNX Runtime next to
    PyTorch on sample inputs, and the command fails if they disagree.

    \b
    Examples:
      edgecl export --backbone mobilenet --input-shape 3,128,128 --out mobilenet.onnx
      edgecl learn --dataset digits --checkpoint run1
      edgecl export --from-checkpoint run1 --part full --quantize int8 --out digits.onnx
    """
    from edgecl._files import check_writable_file
    from edgecl.runtime.export import export_model

    check_writable_file(out, "--out")  # before building, pretraining or calibrating
    result = export_model(out=out, part=part, backbone=backbone,
                          backbone_weights=backbone_weights, from_checkpoint=from_checkpoint,
                          dataset=dataset, input_shape=_shape(input_shape),
                          n_classes=n_classes, quantize=quantize)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    shape = ", ".join(map(str, result.input_shape))
    click.echo(f"{'exported':<26} {result.part} part, input (batch, {shape})")
    click.echo(f"{'fp32 model':<26} {result.fp32_path} ({result.fp32_path.stat().st_size:,} B)")
    click.echo(f"{'parity vs PyTorch':<26} {result.parity.describe()}")
    if result.labels is not None:
        labels = ", ".join(map(str, result.labels))
        labels = labels if len(labels) <= 60 else labels[:59] + "…"
        click.echo(f"{'output columns (labels)':<26} {labels} (metadata edgecl.labels)")
    if result.accuracy_fp32 is not None:
        click.echo(f"{'test accuracy, fp32':<26} {result.accuracy_fp32:.4f}")
    if quantize:
        click.echo(f"{'int8 model':<26} {result.path} ({result.path.stat().st_size:,} B)")
        click.echo(f"{'int8 output error':<26} {100 * result.int8_relative_error:.2f}% of the "
                   "mean |output|")
        if result.accuracy_int8 is not None:
            change = 100 * (result.accuracy_int8 - result.accuracy_fp32)
            click.echo(f"{'test accuracy, int8':<26} {result.accuracy_int8:.4f} "
                       f"({change:+.2f} points)")


@cli.command("profile")
@click.option("--profile", "profile", default="cpu", show_default=True,
              help="Device profile whose figures the predictions use (name or .toml path).")
@click.option("--backbone", default=None,
              help="mlp, cnn or mobilenet [default: the one that suits the input shape].")
@click.option("--input-shape", default=None,
              help="Per-sample input shape, e.g. 3,128,128 (MobileNet at CORe50 phone size) "
                   "[default: the dataset's].")
@click.option("--dataset", default="digits", show_default=True,
              help="Gives the input shape and classes when --input-shape is not set; the "
                   "timings use synthetic inputs (weights and values do not change speed).")
@click.option("--classes", "n_classes", type=int, default=None,
              help="Number of classes [default: the dataset's].")
@click.option("--strategy", default="ar1*", show_default=True, help="The strategy to profile.")
@click.option("--codec", default=None, type=click.Choice(list_codecs()),
              help="Replay codec [default: the strategy's, else the profile's replay_codec].")
@click.option("--backend", "backends", multiple=True,
              type=click.Choice(["torch", "ort", "ort-int8"]),
              help="Backends to time the backbone on (repeatable) [default: all three].")
@click.option("--batch", default=32, show_default=True, type=int,
              help="The larger batch size timed (batch 1 is always timed).")
@click.option("--repeats", default=30, show_default=True, type=int,
              help="Timed calls per figure, after --warmup untimed ones.")
@click.option("--warmup", default=5, show_default=True, type=int)
@click.option("--threads", type=int, default=None,
              help="Threads [default: the profile's, at most this machine's cores].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def profile_command(profile: str, backbone: str | None, input_shape: str | None, dataset: str,
                    n_classes: int | None, strategy: str, codec: str | None,
                    backends: tuple[str, ...], batch: int, repeats: int, warmup: int,
                    threads: int | None, as_json: bool) -> None:
    """Time every stage here and predict it on the profile's device.

    Measures the backbone forward (per backend), a streaming head update, the replay
    codec and predict (p50/p95/max after warm-up), counts FLOPs and bytes, and prints next
    to each measurement the roofline prediction for this host (how far to trust the model)
    and for the profile's device.

    \b
    Example:
      edgecl profile --profile jetson-orin-nano --backbone mobilenet --input-shape 3,128,128
    """
    from edgecl.data import load_dataset
    from edgecl.profiles import load_profile
    from edgecl.runtime.profiler import ProfileRequest, profile_stages
    from edgecl.strategies import STRATEGIES

    STRATEGIES.get(strategy)
    device_profile = load_profile(profile)
    shape = _shape(input_shape)
    if shape is None or n_classes is None:
        data = load_dataset(dataset)
        shape = shape or tuple(data.x_train.shape[1:])
        n_classes = n_classes or len(data.classes)
    if n_classes < 2:
        raise UsageError(f"--classes must be >= 2, got {n_classes}")
    request = ProfileRequest(input_shape=shape, n_classes=n_classes, backbone=backbone,
                             strategy=strategy, codec=codec,
                             backends=backends or ("torch", "ort", "ort-int8"), batch=batch,
                             repeats=repeats, warmup=warmup, threads=threads)
    quiet = as_json or not sys.stderr.isatty()
    report = profile_stages(device_profile, request,
                            progress=None if quiet else lambda m: click.echo(m + " ...",
                                                                             err=True))
    if as_json:  # the warnings are in it
        click.echo(json.dumps(report, indent=2))
        return
    _print_profile(report)
    for warning in report["warnings"]:  # after the table: they refer to its rows
        click.echo(f"warning: {warning}", err=True)


def _print_profile(report: dict[str, Any]) -> None:
    echo = click.echo
    model = report["model"]
    echo(f"{model['strategy']} on {model['backbone']} {tuple(model['input_shape'])} -> latent "
         f"{tuple(model['latent_shape'])}; profile {report['profile']} ({report['device']})")
    echo(f"backbone {model['backbone_flops_per_sample'] / 1e6:.2f} MFLOP/sample, "
         f"{model['backbone_params']:,} params; head {model['head_params']:,} params, "
         f"{model['head_train_flops_per_sample'] / 1e6:.3f} MFLOP/sample per training step")
    echo("")
    echo(f"{'stage':<36} {'backend':<9} {'batch':>5} | {'p50':>8} {'p95':>8} {'max':>8} | "
         f"{'pred.':>8} {'meas/pred':>9} | {'device':>8}")
    echo(f"{'':<36} {'':<9} {'':>5} | {'measured here (ms)':^26} | {'host roofline':^18} | "
         f"{'pred. ms':>8}")

    def ms(value: float | None) -> str:
        return "     -  " if value is None else f"{value:8.3f}"

    for row in report["stages"]:
        m = row["measured_here_ms"]
        ratio = row["host_measured_over_predicted"]
        backend = row.get("backend") or row.get("codec") or ""
        echo(f"{row['stage']:<36} {backend:<9} {row['batch']:>5} | {m['p50']:8.3f} "
             f"{m['p95']:8.3f} {m['max']:8.3f} | {ms(row['predicted_host_ms'])} "
             f"{'       - ' if ratio is None else f'{ratio:8.2f}x'} | "
             f"{ms(row['predicted_device_ms'])}")
    memory = report["memory"]
    echo("")
    echo(f"peak RSS {memory['peak_rss_mb']:.1f} MB; replay {memory['codec']}, "
         f"{memory['bytes_per_sample']:,} B per latent"
         + (f", {memory['replay_bytes_at_profile_budget']['latents_that_fit']:,} fit the "
            "profile's replay budget" if memory["replay_bytes_at_profile_budget"] else ""))
    for key, text in report["labels"].items():
        echo(f"{key}: {text}")
    for note in report["notes"]:
        echo(f"note: {note}")


@cli.command("strategies")
def strategies_command() -> None:
    """List the registered continual-learning strategies."""
    from edgecl.strategies import STRATEGIES

    for entry in STRATEGIES.entries():
        click.echo(f"{entry.name:<16} {entry.summary}")


@cli.command("profiles")
def profiles_command() -> None:
    """List the built-in device profiles and their budgets."""
    from edgecl.profiles import list_profiles, load_profile

    click.echo(f"{'name':<18} {'cores':>5} {'RAM MB':>7} {'GFLOP/s':>8} {'replay MB':>9} "
               f"{'update ms':>9}  description")
    for name in list_profiles():
        p = load_profile(name)
        label = name if p.name == name else f"{name} → {p.name}"
        click.echo(f"{label:<18} {p.device.cores:>5} {p.device.ram_mb:>7} "
                   f"{p.device.sustained_gflops:>8g} {p.budget.replay_mb:>9g} "
                   f"{p.budget.update_ms:>9g}  {p.description}")


def main() -> None:  # pragma: no cover - console entry point
    cli()
