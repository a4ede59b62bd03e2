"""Update scheduler, driven by a fake clock: a synthetic machine whose true update time is a
known function of the plan, with noise, feeds ``observe``; nothing here reads a real clock."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgecl.errors import BudgetError, CheckpointError, UsageError
from edgecl.runtime.cost import UpdateCoefficients, UpdateCostModel
from edgecl.runtime.scheduler import CATEGORIES, MAX_MARGIN, UpdatePlan, UpdateScheduler

TRUE = UpdateCoefficients(backbone_ms_per_sample=0.8, step_fixed_ms=0.5,
                          step_ms_per_sample=0.03, store_ms=0.3)
PRIOR = UpdateCoefficients(0.2, 0.05, 0.02, 0.01)  # a roofline 3-10x too optimistic


class FakeMachine:
    """Runs a plan in zero real time and says how long it 'took'."""

    def __init__(self, *, noise: float = 0.1, gc_rate: float = 0.0, seed: int = 0) -> None:
        self.noise = noise
        self.gc_rate = gc_rate  # chance of a 50 ms pause in an update
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def true_ms(n_new: int, replay: int, steps: int) -> float:
        return (TRUE.backbone_ms_per_sample * n_new
                + steps * (TRUE.step_fixed_ms + TRUE.step_ms_per_sample * (n_new + replay))
                + TRUE.store_ms)

    def run(self, plan: UpdatePlan) -> float:
        ms = self.true_ms(plan.n_new_now, plan.replay_per_step, plan.n_steps)
        ms *= math.exp(self.rng.normal(0, self.noise))
        if self.rng.random() < self.gc_rate:
            ms += 50.0
        return ms


def warmed_cost(n: int = 80, seed: int = 0) -> UpdateCostModel:
    """A cost model that has watched ``n`` updates of varied shapes on the fake machine."""
    cost = UpdateCostModel(PRIOR)
    machine = FakeMachine(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        plan = UpdatePlan(n_new_now=int(rng.integers(1, 17)), n_deferred=0,
                          replay_per_step=int(rng.integers(0, 65)),
                          n_steps=int(rng.integers(1, 5)), predicted_ms=0.0, budget_ms=1.0,
                          category="fits", reason="fits")
        cost.observe(plan.n_new_now, plan.replay_per_step, plan.n_steps, machine.run(plan))
    return cost


def scheduler(budget_ms: float, cost: UpdateCostModel, **options) -> UpdateScheduler:
    settings = {"max_replay_per_step": 64, "max_steps": 4, "replay_available": 500}
    settings.update(options)
    return UpdateScheduler(budget_ms=budget_ms, cost=cost, **settings)


BUDGETS = np.geomspace(0.5, 60, 60)


def sweep(cost: UpdateCostModel, n_new: int, **options) -> list[UpdatePlan]:
    return [scheduler(b, cost, **options).plan(n_new) for b in BUDGETS]


def test_plans_shrink_and_grow_monotonically_with_the_budget():
    plans = sweep(warmed_cost(), n_new=8)
    for field in ("n_new_now", "replay_per_step", "n_steps", "predicted_ms"):
        values = [getattr(p, field) for p in plans if p.n_steps > 0]
        assert values == sorted(values), field
    deferred = [p.n_deferred for p in plans]
    assert deferred == sorted(deferred, reverse=True)
    # Replay grows before steps: a second step only once replay is at its cap.
    assert all(p.replay_per_step == 64 for p in plans if p.n_steps > 1)
    # The sweep passes through every regime, tight to generous.
    seen = {p.category for p in plans}
    assert {"nothing fits", "new data subsampled", "replay reduced", "fits"} <= seen


def test_every_plan_fits_its_planning_budget():
    cost = warmed_cost()
    for budget in BUDGETS:
        sched = scheduler(budget, cost)
        plan = sched.plan(8)
        if plan.n_steps:
            assert plan.predicted_ms <= sched.planning_budget_ms() + 1e-9
            assert plan.predicted_ms == pytest.approx(cost.predict_ms(
                plan.n_new_now, plan.replay_per_step, plan.n_steps))


def test_generous_budgets_saturate_at_the_caps():
    cost = warmed_cost()
    plan = scheduler(1e4, cost).plan(8)
    assert (plan.n_new_now, plan.replay_per_step, plan.n_steps) == (8, 64, 4)
    assert plan.category == "fits" and plan.reason == "fits"
    # Replay cannot exceed what the buffer holds.
    plan = scheduler(1e4, cost, replay_available=10).plan(8)
    assert (plan.replay_per_step, plan.n_steps) == (10, 4)
    plan = scheduler(1e4, cost).plan(8, replay_available=0)
    assert (plan.replay_per_step, plan.n_steps) == (0, 4)
    # A callable is asked at each plan.
    held = [3]
    sched = scheduler(1e4, cost, replay_available=lambda: held[0])
    assert sched.plan(1).replay_per_step == 3
    held[0] = 70
    assert sched.plan(1).replay_per_step == 64


def test_tight_budgets_cut_replay_to_the_floor_then_subsample():
    cost = warmed_cost()
    plans = sweep(cost, n_new=8, min_replay_per_step=4)
    assert all(p.replay_per_step >= 4 for p in plans if p.n_steps)
    assert all(p.n_steps == 1 for p in plans
               if p.category in ("replay reduced", "new data subsampled"))
    subsampled = [p for p in plans if p.category == "new data subsampled"]
    assert subsampled and all(p.replay_per_step == 4 and 1 <= p.n_new_now < 8
                              for p in subsampled)


def test_a_budget_below_the_backbone_cost_is_flagged_and_defers():
    cost = warmed_cost()
    backbone_ms = cost.coefficients.backbone_ms_per_sample * 8
    sched = scheduler(backbone_ms * 0.5, cost)
    plan = sched.plan(8)
    assert plan.backbone_over_budget
    assert plan.n_new_now < 8 and plan.n_deferred == 8 - plan.n_new_now
    assert plan.reason.startswith(plan.category) and "backbone alone needs" in plan.reason
    assert sched.stats()["n_backbone_over_budget"] == 1
    # A budget the backbone fits, however tight otherwise, is not flagged.
    assert not scheduler(backbone_ms * 10, cost).plan(8).backbone_over_budget


def test_nothing_fits_defers_everything_once_the_model_has_evidence():
    cost = warmed_cost()
    plan = scheduler(0.1, cost).plan(5)
    assert (plan.n_new_now, plan.n_deferred, plan.n_steps) == (0, 5, 0)
    assert plan.category == "nothing fits" and plan.backbone_over_budget


def test_a_wrong_prior_cannot_starve_the_scheduler():
    # A prior 10x too pessimistic says nothing ever fits; the first updates learn one sample
    # anyway, the model sees the real machine, and then whole updates fit.
    cost = UpdateCostModel(UpdateCoefficients(8.0, 5.0, 0.3, 3.0))
    sched = scheduler(10.0, cost)
    machine = FakeMachine(noise=0.05)
    first = sched.plan(4)
    assert first.n_new_now == 1 and "re-measure" in first.reason
    for _ in range(30):
        plan = sched.plan(4)
        sched.observe(plan, machine.run(plan))
    plan = sched.plan(4)
    assert plan.n_new_now == 4 and plan.replay_per_step > 0


def test_a_scheduler_stalled_by_a_slow_spell_recovers():
    sched = scheduler(8.0, UpdateCostModel(PRIOR), probe_every=16)
    machine = FakeMachine(noise=0.05, seed=4)

    def run(n_plans: int, slowdown: float) -> list[UpdatePlan]:
        plans = []
        for _ in range(n_plans):
            plans.append(sched.plan(4))
            if plans[-1].n_steps:
                sched.observe(plans[-1], slowdown * machine.run(plans[-1]))
        return plans

    before = run(100, 1.0)[-10:]
    assert all(p.n_new_now == 4 and p.replay_per_step > 0 for p in before)
    slow = run(100, 8.0)  # a neighbour hogs the machine: soon nothing fits any more
    assert sum(p.n_new_now == 0 for p in slow[-32:]) >= 30  # but a probe every 16 plans
    after = run(100, 1.0)  # the machine is free again; only an update can show it
    assert after[0].n_new_now <= 1
    assert all(p.n_new_now == 4 for p in after[-10:])
    replay_before = np.mean([p.replay_per_step for p in before])
    assert np.mean([p.replay_per_step for p in after[-10:]]) == pytest.approx(replay_before,
                                                                             rel=0.2)


def test_deferral_queue_is_bounded_and_drops_are_counted():
    sched = scheduler(10.0, warmed_cost(), max_deferred=5)
    assert sched.defer(range(3)) == 0
    assert sched.defer(range(3, 8)) == 3
    assert sched.deferred == (3, 4, 5, 6, 7)  # oldest dropped first
    stats = sched.stats()
    assert (stats["n_deferred_total"], stats["n_dropped_total"], stats["n_queued"]) == (8, 3, 5)


def test_idle_time_drains_the_queue_then_replays():
    cost = warmed_cost()
    sched = scheduler(10.0, cost, idle_batch=4)
    sched.defer([f"x{i}" for i in range(10)])
    plans = sched.idle(200.0)
    deferred = [p for p in plans if p.category == "idle deferred"]
    replay = [p for p in plans if p.category == "idle replay"]
    assert [item for p in deferred for item in p.items] == [f"x{i}" for i in range(10)]
    assert all(p.n_new_now == len(p.items) <= 4 and p.n_deferred == 0 for p in deferred)
    assert plans[:len(deferred)] == deferred  # the queue first, then replay
    assert replay and all(p.n_new_now == 0 and p.replay_per_step > 0 for p in replay)
    assert sched.n_queued == 0
    # Each plan fits one update's budget; together they fit the idle budget.
    assert all(p.predicted_ms <= sched.planning_budget_ms() + 1e-9 for p in plans)
    assert sum(p.predicted_ms for p in plans) <= sched.planning_budget_ms(200.0) + 1e-9
    counts = sched.stats()["by_category"]
    assert counts["idle deferred"] == len(deferred) and counts["idle replay"] == len(replay)


def test_a_short_idle_time_takes_only_what_fits_and_keeps_the_rest():
    sched = scheduler(10.0, warmed_cost(), idle_batch=4)
    sched.defer(range(10))
    plans = sched.idle(3.0)
    learned = [item for p in plans for item in p.items]
    assert learned == list(range(len(learned))) and len(learned) < 10
    assert sched.deferred == tuple(range(len(learned), 10))
    assert sched.idle(0.0) == []
    assert sched.idle(1e4, replay_available=0, max_plans=3)[-1].category == "idle deferred"


def test_at_most_one_percent_of_updates_run_20_percent_over_budget():
    machine = FakeMachine(noise=0.15, gc_rate=0.003, seed=1)
    rng = np.random.default_rng(1)
    for budget in (6.0, 12.0, 25.0):
        sched = scheduler(budget, UpdateCostModel(PRIOR))
        over = total = 0
        for i in range(1500):
            plan = sched.plan(int(rng.integers(1, 9)))
            if plan.n_steps == 0:
                continue
            measured = machine.run(plan)
            sched.observe(plan, measured)
            if i >= 100:  # after warm-up
                total += 1
                over += measured > 1.2 * budget
        assert total > 1000 and over / total <= 0.01, (budget, over / total)


def test_state_dict_round_trip_gives_identical_plans():
    cost = UpdateCostModel(PRIOR)
    sched = scheduler(8.0, cost, max_deferred=4)
    machine = FakeMachine(seed=2)
    rng = np.random.default_rng(2)
    for _ in range(50):
        plan = sched.plan(int(rng.integers(1, 9)))
        sched.observe(plan, machine.run(plan))
        sched.defer(range(plan.n_deferred))
    state = json.loads(json.dumps(sched.state_dict()))
    restored = scheduler(8.0, UpdateCostModel(TRUE), max_deferred=4)
    restored.load_state_dict(state)
    stats, restored_stats = sched.stats(), restored.stats()
    # The queued items are not saved; the restored scheduler counts them as lost.
    assert restored_stats["n_queued"] == 0
    assert restored_stats["n_dropped_total"] == stats["n_dropped_total"] + stats["n_queued"]
    for key in ("n_plans", "by_category", "mean_replay_per_step", "n_deferred_total", "margin"):
        assert restored_stats[key] == stats[key], key
    twin = FakeMachine(seed=3), FakeMachine(seed=3)
    for _ in range(30):
        n_new = int(rng.integers(1, 9))
        a, b = sched.plan(n_new), restored.plan(n_new)
        assert a == b
        sched.observe(a, twin[0].run(a))
        restored.observe(b, twin[1].run(b))


@pytest.mark.parametrize("garbage", [
    lambda s: None,
    lambda s: [s],
    lambda s: {**s, "version": 9},
    lambda s: {k: v for k, v in s.items() if k != "n_plans"},
    lambda s: {**s, "n_plans": -1},
    lambda s: {**s, "n_deferred_total": 2.5},
    lambda s: {**s, "by_category": {"fits": 1}},
    lambda s: {**s, "cost": {"version": 1}},
])
def test_loading_garbage_raises_checkpoint_error_and_changes_nothing(garbage):
    sched = scheduler(1e4, warmed_cost())
    sched.plan(3)
    before = sched.stats()
    with pytest.raises(CheckpointError):
        sched.load_state_dict(garbage(sched.state_dict()))
    assert sched.stats() == before


def test_bad_settings_are_usage_errors():
    cost = warmed_cost(n=0)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(BudgetError):
            scheduler(bad, cost)
    with pytest.raises(UsageError):
        scheduler(10.0, cost, min_replay_per_step=8, max_replay_per_step=4)
    with pytest.raises(UsageError):
        scheduler(10.0, cost, max_steps=0)
    with pytest.raises(UsageError):
        scheduler(10.0, cost).plan(-1)


def test_no_new_data_is_an_empty_plan_and_observing_it_is_a_no_op():
    cost = warmed_cost()
    sched = scheduler(10.0, cost)
    plan = sched.plan(0)
    assert (plan.n_new_now, plan.n_steps, plan.category) == (0, 0, "no new data")
    n = cost.n_observed
    sched.observe(plan, 0.0)
    assert cost.n_observed == n


def test_stats_summarise_what_was_planned():
    sched = scheduler(1e4, warmed_cost())
    for n in (1, 2, 3):
        sched.plan(n)
    sched.plan(0)
    stats = sched.stats()
    assert stats["n_plans"] == 4
    assert stats["by_category"]["fits"] == 3 and stats["by_category"]["no new data"] == 1
    assert stats["mean_replay_per_step"] == 64 and stats["mean_steps"] == 4
    assert set(stats["by_category"]) == set(CATEGORIES)
    json.dumps(stats)  # plain values, ready for the report


class ContendedMachine(FakeMachine):
    """The fake machine beside busy processes: an update's own work as before, plus time
    the learner's thread waits for a core (preemption slices of a few ms, whatever the
    update's size), which is what the wall clock shows."""

    def __init__(self, *, busy_share: float, seed: int = 0) -> None:
        super().__init__(noise=0.1, seed=seed)
        self.busy_share = busy_share  # chance an update is preempted, per ms of own work

    def run_contended(self, plan: UpdatePlan) -> tuple[float, float]:
        own = self.run(plan)
        slices = self.rng.poisson(self.busy_share * own)
        return own, own + 4.0 * slices  # (own ms, wall ms)


def contended_run(sched: UpdateScheduler, machine: ContendedMachine, n_plans: int, *,
                  n_new: int = 4, own_time_known: bool = True) -> list[UpdatePlan]:
    plans = []
    for _ in range(n_plans):
        plan = sched.plan(n_new)
        plans.append(plan)
        if plan.n_steps:
            own, wall = machine.run_contended(plan)
            if own_time_known:
                sched.observe(plan, own, wall_ms=wall)
            else:  # what the scheduler did before it was told the own time
                sched.observe(plan, wall)
    return plans


def test_time_stolen_by_other_processes_neither_grows_the_margin_nor_stalls_learning():
    # Two busy processes on two cores: most updates wait for a core, some several times.
    sched = scheduler(12.0, UpdateCostModel(PRIOR))
    machine = ContendedMachine(busy_share=0.5, seed=2)
    plans = contended_run(sched, machine, 600)
    stats = sched.stats()
    assert stats["margin"] < 1.6  # the own-time errors only: bounded
    assert 1.5 < stats["contention"] <= 4.0  # measured, separately
    assert stats["stolen_share"] > 0.3
    learned = sum(p.n_new_now for p in plans[100:])
    assert learned == 4 * 500  # every sample learned on arrival
    assert sched.n_not_learned == 0 and sched.stall_advice() is None
    # Contention shrinks replay (the budget is wall time), never below the floor.
    quiet = scheduler(12.0, warmed_cost())
    assert np.mean([p.replay_per_step for p in plans[-50:]]) < quiet.plan(4).replay_per_step


def test_without_the_own_time_the_same_contention_starves_the_learner():
    # The control for the test above: the wall time as the update's cost, as before.
    sched = scheduler(12.0, UpdateCostModel(PRIOR))
    machine = ContendedMachine(busy_share=0.5, seed=2)
    plans = contended_run(sched, machine, 600, own_time_known=False)
    assert sum(p.n_new_now for p in plans[100:]) < 0.8 * 4 * 500


def test_the_margin_is_capped():
    sched = scheduler(12.0, UpdateCostModel(PRIOR))
    machine = FakeMachine(noise=2.0, seed=3)  # own times wildly unpredictable
    for _ in range(200):
        plan = sched.plan(4)
        if plan.n_steps:
            sched.observe(plan, machine.run(plan))
    assert sched.cost.margin(0.99) > MAX_MARGIN
    assert sched.margin == MAX_MARGIN
    assert sched.planning_budget_ms() == pytest.approx(12.0 / MAX_MARGIN)


def test_contention_ends_and_the_plans_recover_within_a_window():
    sched = scheduler(8.0, UpdateCostModel(PRIOR))
    quiet = contended_run(sched, ContendedMachine(busy_share=0.0, seed=5), 200)
    busy = contended_run(sched, ContendedMachine(busy_share=1.0, seed=6), 200)
    assert sched.contention > 2
    after = contended_run(sched, ContendedMachine(busy_share=0.0, seed=7), 40)
    assert sched.contention == pytest.approx(1.0)
    replay = [np.mean([p.replay_per_step for p in part[-16:]]) for part in (quiet, busy, after)]
    assert replay[1] < 0.8 * replay[0]
    assert replay[2] == pytest.approx(replay[0], rel=0.15)
    assert all(p.n_new_now == 4 for p in busy + after)


def test_a_learner_that_cannot_keep_up_says_learning_stalled_and_what_to_do():
    sched = scheduler(0.5, warmed_cost(), max_deferred=64, probe_every=10**6,
                      calibration_updates=0)
    for _ in range(100):
        plan = sched.plan(4)
        sched.defer(range(plan.n_deferred))
    stats = sched.stats()
    assert stats["learning_stalled"] and stats["not_learned_fraction"] == 1.0
    advice = sched.stall_advice()
    assert advice.startswith("learning stalled: 100.0% of 400 streamed samples not learned")
    # The suggested budget fits the smallest update.
    suggested = float(advice.split("--update-budget-ms to at least ")[1].split(",")[0])
    assert scheduler(suggested, warmed_cost()).plan(1).n_new_now == 1
    assert "--sleep-ms" in advice and "--schedule fixed" in advice
    assert scheduler(50.0, warmed_cost()).stall_advice() is None


def test_contention_counters_survive_a_state_round_trip():
    sched = scheduler(12.0, UpdateCostModel(PRIOR))
    contended_run(sched, ContendedMachine(busy_share=0.5, seed=8), 100)
    restored = scheduler(12.0, UpdateCostModel(PRIOR))
    restored.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    for key in ("contention", "stolen_share", "n_offered_total", "not_learned_fraction"):
        assert restored.stats()[key] == pytest.approx(sched.stats()[key]), key
    assert restored.plan(4) == sched.plan(4)
    old = sched.state_dict()
    for key in ("n_offered_total", "wall_ms_total", "own_ms_total", "recent"):
        old.pop(key)
    restored.load_state_dict(old)  # a state saved before contention was measured
    assert restored.contention == 1.0
    with pytest.raises(CheckpointError, match="recent"):
        restored.load_state_dict({**sched.state_dict(), "recent": [[1.0, -2.0]]})
