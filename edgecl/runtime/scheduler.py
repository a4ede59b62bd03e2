"""The update scheduler: before each update, decide how much of it fits the time budget.

An update learns a mini-batch of new samples in ``n_steps`` optimizer steps, each on all
the new samples plus ``replay_per_step`` latents replayed from the buffer. The scheduler
sizes it from the cost model's prediction, generous budget to tight:

    budget left over   ->  more replay per step, up to max_replay_per_step and the buffer,
                           then more steps (each draws fresh replay), up to max_steps
    budget tight       ->  less replay, down to min_replay_per_step, one step
    too tight for the  ->  learn a subsample of the new data now, defer the rest to a
    new data alone         bounded queue that idle() works through when no data comes

Replay comes first because, under a fixed compute budget, spending it on uniformly sampled
replay is hard to beat (Prabhu et al. 2023, "Computationally Budgeted Continual Learning:
What Does Matter?"). The idle work follows the wake/sleep split of SIESTA (Harun et al.
2023): learn cheaply while data streams in, consolidate with replay while it does not.

Plans are made against ``budget_ms * target_fraction / cost.margin(quantile)``: the margin
is the cost model's ``quantile`` of measured / predicted. The margin's spread comes from
the body of the error distribution (it ignores preemptions, see ``UpdateCostModel.margin``),
so more than ``1 - quantile`` of updates pass the budget itself, by little: with the
defaults, 1.0 and 0.99, ``tools/bench_budget.py`` measured at most 1 % of updates over
1.2x the budget wherever the smallest update fits it, and 12-18 % over the budget itself
at 2 ms (none from 5 ms up). With a ``target_fraction`` of 0.8 more updates stay under the
budget, but at 2 ms latent-replay learned only 37-45 % of the samples on arrival, against
80-99 % with 1.0. Planning the median update to the budget and the 99.9th percentile to
1.2x it, closer to that bound, was tried and deferred more, not less: at 2 ms latent-replay
learned 40 % of the samples on arrival, and ar1* on digits at 5 ms 7 %, since a 99.9th
percentile from 64 observations swings with every slow update.

Other processes on the same cores (ROS nodes beside the learner, a camera pipeline) slow
updates without making them any bigger. So the cost model learns each update's *own* time
(wall time less the time other processes had the CPU; see
:mod:`edgecl.runtime.contention`), and contention is measured separately, as recent wall
time over own time, capped at ``MAX_CONTENTION``. It shrinks replay and steps, never the new
data: whether the new samples are learned now depends on the own-time prediction alone, so
that a learner whose smallest update fits the budget on a quiet core keeps learning every
sample however busy the machine is. (Before, stolen time entered the cost model; beside two
busy processes its margin grew to 6,030,072 and most samples were deferred or dropped.)
The margin itself is capped at ``MAX_MARGIN``.

No clock and no randomness inside: time comes in through :meth:`observe`, which is what
makes the scheduler testable with a fake clock and replayable from a state.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from edgecl.errors import BudgetError, CheckpointError, UsageError
from edgecl.runtime.cost import UpdateCostModel

__all__ = ["CATEGORIES", "UpdatePlan", "UpdateScheduler"]

# The most the cost model's error margin and the contention factor may shrink a plan by. On
# a quiet machine the margin is 1.1-1.5 (tools/bench_budget.py); more means the own-time
# measurements are themselves disturbed, and planning on them would only starve the learner.
MAX_MARGIN = 3.0
MAX_CONTENTION = 4.0
CONTENTION_WINDOW = 16  # updates over which wall / own time is averaged
# More than this share of the offered samples not learned (dropped, or still queued) is
# reported as "learning stalled".
STALL_FRACTION = 0.01

# Why a plan looks as it does; stats() counts plans by these.
CATEGORIES = (
    "fits",                  # all new data, full replay (what the buffer and cap allow)
    "replay reduced",        # all new data, less replay than the cap
    "new data subsampled",   # part of the new data now, the rest deferred
    "nothing fits",          # no new data now, all deferred
    "no new data",           # nothing was offered
    "idle deferred",         # idle(): deferred samples learned
    "idle replay",           # idle(): replay-only steps
)


@dataclass(frozen=True)
class UpdatePlan:
    """What to do in one update, and why."""

    n_new_now: int  # new samples to learn now (the first ones; <= those offered)
    n_deferred: int  # new samples the learner should hand to defer()
    replay_per_step: int  # replayed latents in each step
    n_steps: int  # optimizer steps, each on all n_new_now samples plus fresh replay
    predicted_ms: float  # the cost model's prediction for this plan
    budget_ms: float  # the budget the plan was made for (before the safety margin)
    category: str  # one of CATEGORIES
    reason: str  # one line for people: the category and, when something was cut, why
    backbone_over_budget: bool = False  # the frozen forward of the new data alone won't fit
    probe: bool = False  # one sample learned although nothing fits, to re-measure
    items: tuple[Any, ...] = ()  # idle plans: the deferred items to learn, oldest first


class UpdateScheduler:
    """Sizes each update to a time budget with an :class:`UpdateCostModel`.

    ``replay_available`` is how many latents the buffer holds: a number, or a callable
    asked at each plan (``lambda: len(buffer)``); ``plan`` and ``idle`` may also be told.
    The deferred queue holds at most ``max_deferred`` opaque items (whatever the learner
    needs to learn a sample later); when full, the oldest are dropped, and counted.
    ``idle_batch`` is the most deferred samples one idle update learns.
    """

    def __init__(
        self,
        *,
        budget_ms: float,
        cost: UpdateCostModel,
        max_replay_per_step: int,
        max_steps: int = 4,
        min_replay_per_step: int = 0,
        replay_available: int | Callable[[], int] = 0,
        target_fraction: float = 1.0,  # plan to the budget itself, at the margin quantile
        quantile: float = 0.99,  # margin quantile: ~1 % of updates may pass the target
        max_deferred: int = 1024,  # queue bound; a stream faster than idle time drops oldest
        idle_batch: int = 32,  # deferred samples per idle update, as a normal mini-batch
        # When nothing fits, learn one sample anyway (a probe) while the cost model has seen
        # fewer than calibration_updates updates, after probe_every plans in a row learned
        # nothing, and right after a probe that ran within budget * target_fraction:
        # predictions only change through observed updates, so without probes a wrong
        # prior, or a machine that was slow for a while, would starve the learner for good.
        calibration_updates: int = 8,
        probe_every: int = 16,
    ) -> None:
        if not (isinstance(budget_ms, (int, float)) and math.isfinite(budget_ms)
                and budget_ms > 0):
            raise BudgetError(f"update budget must be a positive number of ms, got {budget_ms!r}")
        if not 0 <= min_replay_per_step <= max_replay_per_step:
            raise UsageError(f"need 0 <= min_replay_per_step <= max_replay_per_step, got "
                             f"{min_replay_per_step} and {max_replay_per_step}")
        if min(max_steps, idle_batch, probe_every) < 1 or min(max_deferred,
                                                              calibration_updates) < 0:
            raise UsageError(f"need max_steps, idle_batch and probe_every >= 1, max_deferred "
                             f"and calibration_updates >= 0, got {max_steps}, {idle_batch}, "
                             f"{probe_every}, {max_deferred} and {calibration_updates}")
        if not 0 < target_fraction <= 1:
            raise UsageError(f"target_fraction must be in (0, 1], got {target_fraction}")
        if not 0.5 <= quantile < 1:
            raise UsageError(f"quantile must be in [0.5, 1), got {quantile}")
        self.budget_ms = float(budget_ms)
        self.cost = cost
        self.max_replay_per_step = int(max_replay_per_step)
        self.max_steps = int(max_steps)
        self.min_replay_per_step = int(min_replay_per_step)
        self.replay_available = replay_available
        self.target_fraction = float(target_fraction)
        self.quantile = float(quantile)
        self.max_deferred = int(max_deferred)
        self.idle_batch = int(idle_batch)
        self.calibration_updates = int(calibration_updates)
        self.probe_every = int(probe_every)
        self._queue: deque[Any] = deque()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.n_plans = 0
        self.by_category = dict.fromkeys(CATEGORIES, 0)
        self.n_backbone_over_budget = 0
        self.n_probes = 0
        self.n_deferred_total = 0
        self.n_dropped_total = 0
        self.n_observed = 0
        self.n_over_budget = 0  # measured > the plan's budget
        self.n_over_tolerance = 0  # measured > 1.2 x the plan's budget
        self._sum_replay = 0  # over plans with at least one step
        self._sum_steps = 0
        self._n_stepped = 0
        self._starved = 0  # plans in a row that had new data and learned none of it
        self.n_offered_total = 0  # new samples offered to plan()
        self.wall_ms_total = 0.0  # observed updates: what the caller waited ...
        self.own_ms_total = 0.0  # ... and the updates' own work
        self._recent: deque[tuple[float, float]] = deque(maxlen=CONTENTION_WINDOW)

    # -- planning ----------------------------------------------------------------------------
    def planning_budget_ms(self, budget_ms: float | None = None) -> float:
        """What the own time of a plan is sized to: ``budget * target_fraction / margin``,
        the cost model's ``quantile`` margin capped at ``MAX_MARGIN``."""
        budget = self.budget_ms if budget_ms is None else budget_ms
        return budget * self.target_fraction / self.margin

    @property
    def margin(self) -> float:
        return min(self.cost.margin(self.quantile), MAX_MARGIN)

    @property
    def contention(self) -> float:
        """Recent wall time over own time (1: the cores were the learner's), at most
        ``MAX_CONTENTION``: how much longer than its own work an update now takes."""
        own = sum(o for _, o in self._recent)
        if own <= 0:
            return 1.0
        return min(max(sum(w for w, _ in self._recent) / own, 1.0), MAX_CONTENTION)

    def plan(self, n_new: int, *, replay_available: int | None = None) -> UpdatePlan:
        """Size the update that learns ``n_new`` newly arrived samples.

        The learner learns the first ``plan.n_new_now`` of them now and hands the other
        ``plan.n_deferred`` (in whatever form it can learn them from later) to
        :meth:`defer`; after running the plan, it reports the wall time to :meth:`observe`.
        """
        if n_new < 0:
            raise UsageError(f"n_new must be >= 0, got {n_new}")
        plan = self._shape(n_new, self._available(replay_available), self.budget_ms,
                           self.planning_budget_ms())
        self._count(plan)
        self.n_offered_total += n_new
        if n_new > 0:
            self._starved = self._starved + 1 if plan.n_new_now == 0 else 0
        return plan

    def _probe_due(self) -> bool:
        return (self.cost.n_observed < self.calibration_updates
                or self._starved + 1 >= self.probe_every)

    def _shape(self, n_new: int, available: int, budget_ms: float, planning_ms: float,
               *, idle: bool = False) -> UpdatePlan:
        """The plan for ``n_new`` samples under ``planning_ms``, generous to tight: the new
        data against ``planning_ms`` itself, replay and steps against it over contention."""
        cap = min(self.max_replay_per_step, available)
        floor = min(self.min_replay_per_step, available)
        predict = self.cost.predict_ms
        contention = self.contention
        replay_ms = planning_ms / contention

        def make(n_now: int, replay: int, steps: int, category: str, reason: str = "",
                 flagged: bool = False, probe: bool = False) -> UpdatePlan:
            if idle and n_now > 0:
                category = "idle deferred"
            return UpdatePlan(
                n_new_now=n_now, n_deferred=n_new - n_now, replay_per_step=replay,
                n_steps=steps, predicted_ms=predict(n_now, replay, steps) if steps else 0.0,
                budget_ms=budget_ms, category=category,
                reason=f"{category}: {reason}" if reason else category,
                backbone_over_budget=flagged and not idle,  # idle budgets are not promises
                probe=probe)

        if n_new == 0:
            return make(0, 0, 0, "no new data")
        if predict(n_new, floor, 1) > planning_ms:
            backbone_ms = self.cost.coefficients.backbone_ms_per_sample * n_new
            flagged = backbone_ms > planning_ms
            n_now = _largest(1, n_new - 1, lambda k: predict(k, floor, 1) <= planning_ms)
            if flagged:
                why = (f"backbone alone needs {backbone_ms:.3g} ms for {n_new} samples of a "
                       f"{budget_ms:.3g} ms budget ({planning_ms:.3g} ms after the margin)")
            else:
                why = (f"{n_new} samples with {floor} replayed need "
                       f"{predict(n_new, floor, 1):.3g} ms of {planning_ms:.3g} ms planned")
            if n_now == 0 and not idle and self._probe_due():
                return make(1, floor, 1, "new data subsampled",
                            f"{why}; learning one sample to re-measure", flagged, probe=True)
            if n_now == 0:
                return make(0, 0, 0, "nothing fits", why, flagged)
            return make(n_now, floor, 1, "new data subsampled", why, flagged)
        replay = max(floor, _largest(floor, cap, lambda r: predict(n_new, r, 1) <= replay_ms))
        if replay < cap:
            busy = (f" (other processes slow updates {contention:.2g}x)"
                    if contention > 1.05 else "")
            return make(n_new, replay, 1, "replay reduced",
                        f"{replay} of {cap} per step fit {replay_ms:.3g} ms{busy}")
        steps = max(1, _largest(1, self.max_steps, lambda s: predict(n_new, cap, s) <= replay_ms))
        return make(n_new, cap, steps, "fits")

    def idle(self, budget_ms: float, *, replay_available: int | None = None,
             max_plans: int = 64) -> list[UpdatePlan]:
        """Work for ``budget_ms`` with no new data: deferred samples first (oldest first,
        taken off the queue and handed over in ``plan.items``), then replay-only updates.

        Each idle plan is one update that also fits the normal update budget, so a sample
        arriving meanwhile waits one update at most. The plans together fit
        ``budget_ms * target_fraction / margin``.
        """
        if not (math.isfinite(budget_ms) and budget_ms >= 0):
            raise UsageError(f"idle budget must be a time >= 0 in ms, got {budget_ms!r}")
        available = self._available(replay_available)
        per_update = self.planning_budget_ms()
        remaining = self.planning_budget_ms(budget_ms)
        plans: list[UpdatePlan] = []
        while self._queue and len(plans) < max_plans:
            n = min(len(self._queue), self.idle_batch)
            plan = self._shape(n, available, min(self.budget_ms, budget_ms),
                               min(per_update, remaining), idle=True)
            if plan.n_new_now == 0:
                break
            items = tuple(self._queue.popleft() for _ in range(plan.n_new_now))
            plans.append(replace(plan, n_deferred=0, items=items))
            remaining -= plan.predicted_ms
        while len(plans) < max_plans:
            plan = self._replay_only(available, min(self.budget_ms, budget_ms),
                                     min(per_update, remaining))
            if plan is None:
                break
            plans.append(plan)
            remaining -= plan.predicted_ms
        for plan in plans:
            self._count(plan)
        return plans

    def _replay_only(self, available: int, budget_ms: float, planning_ms: float
                     ) -> UpdatePlan | None:
        """The largest replay-only update within ``planning_ms``; None if none fits."""
        cap = min(self.max_replay_per_step, available)
        predict = self.cost.predict_ms
        planning_ms /= self.contention
        replay = _largest(1, cap, lambda r: predict(0, r, 1) <= planning_ms)
        if replay < 1:
            return None
        steps = 1
        if replay == cap:
            steps = _largest(1, self.max_steps, lambda s: predict(0, cap, s) <= planning_ms)
        return UpdatePlan(n_new_now=0, n_deferred=0, replay_per_step=replay, n_steps=steps,
                          predicted_ms=predict(0, replay, steps), budget_ms=budget_ms,
                          category="idle replay", reason="idle replay")

    def _available(self, override: int | None) -> int:
        value = override if override is not None else self.replay_available
        if callable(value):
            value = value()
        if value < 0:
            raise UsageError(f"replay_available must be >= 0, got {value}")
        return int(value)

    def _count(self, plan: UpdatePlan) -> None:
        self.n_plans += 1
        self.by_category[plan.category] += 1
        self.n_backbone_over_budget += plan.backbone_over_budget
        self.n_probes += plan.probe
        if plan.n_steps > 0:
            self._n_stepped += 1
            self._sum_replay += plan.replay_per_step
            self._sum_steps += plan.n_steps

    # -- the deferred queue ------------------------------------------------------------------
    def defer(self, items: Iterable[Any]) -> int:
        """Queue samples to learn in idle time (a plan's last ``n_deferred``); returns how
        many old ones were dropped to make room."""
        dropped = 0
        for item in items:
            self.n_deferred_total += 1
            self._queue.append(item)
            if len(self._queue) > self.max_deferred:
                self._queue.popleft()
                dropped += 1
        self.n_dropped_total += dropped
        return dropped

    @property
    def n_queued(self) -> int:
        return len(self._queue)

    @property
    def deferred(self) -> tuple[Any, ...]:
        """The queued items, oldest first (a copy)."""
        return tuple(self._queue)

    # -- feedback ----------------------------------------------------------------------------
    def observe(self, plan: UpdatePlan, measured_ms: float, *,
                wall_ms: float | None = None) -> None:
        """An executed plan's own time (``measured_ms``: wall time less what other processes
        took) teaches the cost model; its wall time (default: the same) is what the caller
        waited, counted against the budget, and over own time it measures contention."""
        if plan.n_steps == 0 and plan.n_new_now == 0:
            return  # nothing ran
        wall = measured_ms if wall_ms is None else wall_ms
        if not (math.isfinite(wall) and wall >= 0):
            raise UsageError(f"wall_ms must be a finite time >= 0, got {wall_ms!r}")
        self.cost.observe(plan.n_new_now, plan.replay_per_step, plan.n_steps, measured_ms)
        own = min(measured_ms, wall)
        self._recent.append((wall, own))
        self.wall_ms_total += wall
        self.own_ms_total += own
        if plan.probe and wall <= plan.budget_ms * self.target_fraction:
            self._starved = self.probe_every  # faster than feared: probe again next time
        self.n_observed += 1
        self.n_over_budget += wall > plan.budget_ms
        self.n_over_tolerance += wall > 1.2 * plan.budget_ms

    @property
    def n_not_learned(self) -> int:
        """Offered samples that were not learned: dropped from the queue, or still in it."""
        return self.n_dropped_total + self.n_queued

    def stall_advice(self) -> str | None:
        """None while the learner keeps up; else one line: how much was not learned, why,
        and what to change."""
        offered = self.n_offered_total
        if not offered or self.n_not_learned <= STALL_FRACTION * offered:
            return None
        smallest = self.cost.predict_ms(1, 0, 1)  # one sample, no replay, one step
        needed = max(smallest * self.margin / self.target_fraction, smallest)
        backbone = self.cost.coefficients.backbone_ms_per_sample
        why = (f"the smallest update takes about {smallest:.3g} ms of own work here "
               f"({backbone:.3g} ms of it the backbone), against a {self.budget_ms:g} ms "
               f"budget")
        fixes = [f"raise --update-budget-ms to at least {math.ceil(needed * 1.2):g}",
                 "give the learner idle time (--sleep-ms, Learner.sleep)",
                 "learn every sample over budget with --schedule fixed"]
        if backbone > 0.5 * smallest:
            fixes.insert(1, "use a lighter backbone or --backend ort-int8")
        return (f"learning stalled: {self.n_not_learned / offered:.1%} of {offered:,} "
                f"streamed samples not learned; {why}; {', or '.join(fixes)}")

    def stats(self) -> dict[str, Any]:
        """Counts for a report: plans by category, replay and steps chosen, deferrals,
        contention, and whether learning stalled."""
        stepped = max(self._n_stepped, 1)
        observed = max(self.n_observed, 1)
        offered = self.n_offered_total
        return {
            "budget_ms": self.budget_ms,
            "n_plans": self.n_plans,
            "by_category": dict(self.by_category),
            "mean_replay_per_step": self._sum_replay / stepped,
            "mean_steps": self._sum_steps / stepped,
            "n_backbone_over_budget": self.n_backbone_over_budget,
            "n_probes": self.n_probes,
            "n_deferred_total": self.n_deferred_total,
            "n_dropped_total": self.n_dropped_total,
            "n_queued": self.n_queued,
            "n_observed": self.n_observed,
            "over_budget_fraction": self.n_over_budget / observed,
            "over_tolerance_fraction": self.n_over_tolerance / observed,
            "margin": self.margin,
            "contention": self.contention,
            # Over every observed update: the share of its wall time other processes took.
            "stolen_share": (1 - self.own_ms_total / self.wall_ms_total
                             if self.wall_ms_total > 0 else 0.0),
            "n_offered_total": offered,
            "not_learned_fraction": self.n_not_learned / offered if offered else 0.0,
            "learning_stalled": self.stall_advice() is not None,
            "stall_advice": self.stall_advice(),
        }

    # -- state -------------------------------------------------------------------------------
    _COUNTERS = ("n_plans", "n_backbone_over_budget", "n_probes", "n_deferred_total",
                 "n_dropped_total", "n_observed", "n_over_budget", "n_over_tolerance",
                 "_sum_replay", "_sum_steps", "_n_stepped", "_starved")

    def state_dict(self) -> dict[str, Any]:
        """Counters and the cost model's state, as plain JSON-able values.

        The deferred items are opaque and not saved: a restored scheduler starts with an
        empty queue and counts the items it lost as dropped. The configuration (budget,
        caps) is the constructor's, so a run may resume under a new budget.
        """
        state: dict[str, Any] = {"version": 1, "cost": self.cost.state_dict(),
                                 "by_category": dict(self.by_category),
                                 "n_queued": self.n_queued,
                                 "n_offered_total": self.n_offered_total,
                                 "wall_ms_total": self.wall_ms_total,
                                 "own_ms_total": self.own_ms_total,
                                 "recent": [list(r) for r in self._recent]}
        state.update({name.lstrip("_"): getattr(self, name) for name in self._COUNTERS})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; CheckpointError if ``state`` is not one."""
        if not isinstance(state, Mapping) or state.get("version") != 1:
            raise CheckpointError("update scheduler state is invalid: not a version 1 state")
        names = [*(n.lstrip("_") for n in self._COUNTERS), "n_queued"]
        bad = [n for n in names if not _count_value(state.get(n))]
        categories = state.get("by_category")
        if not (isinstance(categories, Mapping) and set(categories) == set(CATEGORIES)
                and all(_count_value(v) for v in categories.values())):
            bad.append("by_category")
        # Absent from states saved before contention was measured: those start from zero.
        offered = state.get("n_offered_total", 0)
        if not _count_value(offered):
            bad.append("n_offered_total")
        totals = [state.get("wall_ms_total", 0.0), state.get("own_ms_total", 0.0)]
        if not all(_time_value(t) for t in totals):
            bad.append("wall_ms_total")
        recent = state.get("recent", [])
        if not (isinstance(recent, list) and len(recent) <= CONTENTION_WINDOW and all(
                isinstance(r, list) and len(r) == 2 and all(_time_value(v) for v in r)
                for r in recent)):
            bad.append("recent")
        if bad:
            raise CheckpointError(f"update scheduler state is invalid: {bad[0]} is missing "
                                  "or not a count")
        self.cost.load_state_dict(state.get("cost"))
        for name in self._COUNTERS:
            setattr(self, name, int(state[name.lstrip("_")]))
        self.by_category = {c: int(categories[c]) for c in CATEGORIES}
        self.n_offered_total = int(offered)
        self.wall_ms_total, self.own_ms_total = (float(t) for t in totals)
        self._recent = deque((tuple(map(float, r)) for r in recent), maxlen=CONTENTION_WINDOW)
        self._queue.clear()
        self.n_dropped_total += int(state["n_queued"])


def _largest(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The largest v in [lo, hi] with ok(v), for ok true up to some point and false after;
    lo - 1 when ok(lo) is false."""
    if hi < lo or not ok(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _count_value(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _time_value(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)
