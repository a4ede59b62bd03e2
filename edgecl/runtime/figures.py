"""Where a run's figures were measured, what they predict for the device, and the checks
that turn figures into warnings.

Latency and memory are measured on the machine that runs ``edgecl learn``. A profile other
than ``cpu`` describes another device (a Raspberry Pi, a Jetson): its latency figures are
then labelled as measured here, with the roofline's prediction for the device beside them
(the same :class:`~edgecl.runtime.cost.UpdateCostModel` prior the scheduler starts from,
the profile's GFLOP/s and bandwidth, not a measurement). ``cpu`` is the generic workstation
profile, the one for "run it here"; its figures are the host's, so they stay unlabelled.
A profile is told apart by name only: its device figures (cores, GFLOP/s) cannot be
checked against a host that is busy, virtualised or throttled.

After each experience a run checks two figures, each warned about once per run:

- peak RSS against the profile's RAM (``RAM_SHARE``);
- accuracy on the experience just learned, right after learning it, against chance among
  the classes seen so far: a method that learned next to nothing says why, through its
  strategy's ``learned_nothing_hint``.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence

from edgecl.data.scenarios import Experience
from edgecl.profiles import DEFAULT_PROFILE, Profile
from edgecl.runtime.learner import Learner

# Peak RSS may take at most this share of the device's RAM. The rest is for its OS (on a
# 512 MB Pi Zero 2 the GPU split and Raspberry Pi OS Lite take 100-150 MB), the page cache,
# and the difference between this host's build of Python and PyTorch and the device's:
# 450 MB on a 512 MB board warns, 480 MB of a 16 GB workstation does not.
RAM_SHARE = 0.5

_RAM_MARK = "MB of RAM"                       # in the RSS warning, so it is given once
_NOTHING_MARK = "learned next to nothing on"  # in the learned-nothing warning, likewise

_GENERIC_HINT = ("the new classes may not be separable in the frozen backbone's features, "
                 "pretrained on the first experience only; a backbone pretrained on broad "
                 "data (--backbone-weights) may separate them")


def is_other_device(profile: Profile) -> bool:
    """Whether ``profile`` describes another device than the one measuring (any but cpu)."""
    return profile.name != DEFAULT_PROFILE


def device_prediction(learner: Learner, profile: Profile, *, online_batch: int | None
                      ) -> dict[str, object] | None:
    """The roofline's prediction for the profile's device of what ``latency_ms`` measures
    here: one update (``online_batch``: a streaming update of that many samples, backbone
    and store included; None: one optimizer step of an experience, a mini-batch of new
    latents and the replayed ones) and the backbone's forward of one sample. None before
    the backbone is split."""
    if not learner.is_pretrained:
        return None
    model = learner.update_cost_model()
    coefficients = model.prior
    replay, steps = _replay_and_steps(learner)
    if online_batch is not None:
        shape = {"new": online_batch, "replayed_per_step": replay, "steps": steps,
                 "backbone_and_store_included": True}
        update_ms = model.predict_ms(online_batch, replay, steps)
    else:
        new = learner.strategy.step_plan.new_per_step or learner.config.batch_size
        shape = {"new": new, "replayed_per_step": replay, "steps": 1,
                 "backbone_and_store_included": False}
        update_ms = (coefficients.step_fixed_ms
                     + coefficients.step_ms_per_sample * (new + replay))
    device = profile.device
    rates = f"{device.sustained_gflops:g} GFLOP/s, {device.memory_bandwidth_gbs:g} GB/s"
    return {
        "what": f"roofline prediction for {profile.name} ({rates}): the FLOPs and bytes of "
                "this backbone and head priced at the profile's rates, not a measurement; "
                f"latency_ms was measured on this machine ({platform.machine()})",
        "profile": profile.name,
        "other_device": is_other_device(profile),
        "update_ms": update_ms,
        "update": shape,
        "backbone_ms_per_sample": coefficients.backbone_ms_per_sample,
        "rates": {"gflops": device.sustained_gflops,
                  "bandwidth_gbs": device.memory_bandwidth_gbs},
    }


def _replay_and_steps(learner: Learner) -> tuple[int, int]:
    """Replayed latents per step and steps per update: the scheduler's means where it
    planned the updates, else the fixed plan's."""
    scheduler = learner.scheduler
    if scheduler is not None and scheduler.n_plans:
        stats = scheduler.stats()
        return round(stats["mean_replay_per_step"]), max(1, round(stats["mean_steps"]))
    return learner.fixed_replay_per_step, 1


def ram_warning(peak_rss_mb: float, profile: Profile, *, when: str = "") -> str | None:
    """A warning when the peak RSS measured here (``when``: e.g. "by experience 0")
    takes more than RAM_SHARE of the profile's RAM; None otherwise."""
    ram = profile.device.ram_mb
    if not peak_rss_mb > RAM_SHARE * ram:
        return None
    when = f" {when}" if when else ""
    return (f"peak RSS measured here{when}, {peak_rss_mb:.0f} MB, is {peak_rss_mb / ram:.0%} of "
            f"{profile.name}'s {ram} {_RAM_MARK}, more than the {RAM_SHARE:.0%} that leaves "
            "room for its OS and page cache: as measured here the run would likely not fit "
            "there. The figure is this whole process (Python, PyTorch, the dataset, the "
            "learner); a smaller backbone, input or --replay-mb cuts the learner's share, a "
            "torch-free device runtime (future work) the rest")


def learned_nothing_warning(learner: Learner, experience: Experience, accuracy: float,
                            n_seen: int) -> str | None:
    """A warning when the accuracy on the experience just learned, measured right after
    learning it, is below chance among the ``n_seen`` classes seen so far (1 / n_seen: what
    guessing among them would score); None otherwise."""
    if n_seen < 2 or math.isnan(accuracy) or accuracy >= 1 / n_seen:
        return None
    hint = learner.strategy.learned_nothing_hint or _GENERIC_HINT
    classes = ",".join(str(c) for c in experience.classes)
    return (f"{learner.strategy.name} {_NOTHING_MARK} experience {experience.index} "
            f"(classes {classes}): accuracy {accuracy:.3f} on its test set right after "
            f"learning it, below chance ({1 / n_seen:.3f} among the {n_seen} classes seen); "
            f"{hint}")


def experience_warnings(learner: Learner, profile: Profile, experiences: Sequence[Experience],
                        index: int, row: Sequence[float], notes: Sequence[str]) -> list[str]:
    """The checks after experience ``index`` (``row``: the accuracy on every experience's
    test set), each at most once per run: a warning already in ``notes`` (given before,
    or restored from a checkpoint) is not repeated."""
    seen = set().union(*(e.classes for e in experiences[: index + 1]))
    found = [
        (_NOTHING_MARK, learned_nothing_warning(learner, experiences[index], row[index],
                                                len(seen))),
        (_RAM_MARK, ram_warning(learner.memory_stats()["peak_rss_mb"], profile,
                                when=f"by the end of experience {index}")),
    ]
    return [warning for mark, warning in found
            if warning is not None and not any(mark in note for note in notes)]
