"""Cost model: FLOP and byte counts, the roofline, host calibration, the online update model."""

from __future__ import annotations

import json
import math
import statistics
import time

import numpy as np
import pytest
import torch
from torch import nn

from edgecl.errors import CheckpointError, EdgeclWarning, UsageError
from edgecl.profiles import load_profile
from edgecl.runtime.cost import (
    Roofline,
    UpdateCoefficients,
    UpdateCostModel,
    count_forward,
    count_train_step,
    measure_host_rates,
)

F32 = 4  # bytes


# --------------------------------------------------------------------------- counting


def test_linear_forward_is_two_flops_per_multiply_add():
    layer = nn.Linear(64, 10)
    for batch in (1, 8):
        cost = count_forward(layer, (64,), batch=batch)
        assert cost.flops == 2 * 64 * 10  # per sample, whatever the batch
        assert cost.params == 64 * 10 + 10
        assert cost.param_bytes == cost.params * F32
        assert cost.activation_bytes == 10 * F32
        assert [layer.kind for layer in cost.layers] == ["gemm"]


def test_convolutions_are_counted_and_depthwise_ones_kept_apart():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False))
    cost = count_forward(model, (3, 16, 16), batch=2)
    dense = 2 * (3 * 3 * 3) * 8 * 16 * 16
    depthwise = 2 * (3 * 3) * 8 * 16 * 16
    assert cost.flops == dense + depthwise
    assert [layer.kind for layer in cost.layers] == ["gemm", "memory", "memory", "grouped"]
    # FlopCounterMode counts BatchNorm and ReLU as 0 FLOPs; they cost bytes instead.
    assert [layer.flops for layer in cost.layers] == [dense, 0, 0, depthwise]
    assert cost.flops_by_kind() == {"gemm": dense, "grouped": depthwise, "pool": 0, "memory": 0}
    assert all(layer.output_bytes == 8 * 16 * 16 * F32 for layer in cost.layers)


def test_activation_bytes_peak_and_bytes_moved():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    batch = 4
    cost = count_forward(model, (64,), batch=batch)
    assert cost.activation_bytes == (32 + 32 + 10) * F32
    assert cost.peak_activation_bytes == (64 + 32) * F32  # the first layer's input + output
    weights = (64 * 32 + 32 + 32 * 10 + 10) * F32
    io = ((64 + 32) + (32 + 32) + (32 + 10)) * F32
    assert cost.bytes_moved == pytest.approx(weights / batch + io)


def test_counting_leaves_the_callers_module_alone():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_forward(model, (8,), batch=4)
    count_train_step(model, (8,), batch=4)
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_arithmetic_outside_leaf_modules_is_counted():
    class Bilinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(16, 4))
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(torch.matmul(x, self.weight))

    cost = count_forward(Bilinear(), (16,))
    assert cost.flops == 2 * 16 * 4
    assert cost.flops_by_kind()["gemm"] == 2 * 16 * 4
    assert any(layer.name == "(functional)" for layer in cost.layers)


def test_train_step_of_a_linear_head_is_forward_plus_weight_gradient_plus_sgd():
    head = nn.Linear(64, 10)
    forward = 2 * 64 * 10 * 16
    # Latents need no gradient: backward computes the weight gradient only (one product).
    assert count_train_step(head, (64,), batch=16) == 2 * forward + 2 * (64 * 10 + 10)


def test_train_step_of_a_deeper_head_approaches_three_forwards():
    head = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))
    forward = count_forward(head, (64,), batch=32).flops * 32
    ratio = count_train_step(head, (64,), batch=32) / forward
    assert 2.5 < ratio < 3.05


def test_train_step_of_one_sample_with_batchnorm_works():
    head = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    assert count_train_step(head, (8,), batch=1) > 0


def test_bad_batch_is_a_usage_error():
    with pytest.raises(UsageError):
        count_forward(nn.Linear(2, 2), (2,), batch=0)
    with pytest.raises(UsageError):
        count_train_step(nn.Linear(2, 2), (2,), batch=0)


# --------------------------------------------------------------------------- roofline


def test_roofline_takes_the_slower_of_compute_and_memory():
    roof = Roofline(gflops=100.0, bandwidth_gbs=10.0, overhead_ms=0.5)
    # 1e9 FLOPs at 100 GFLOP/s = 10 ms; 1e6 bytes at 10 GB/s = 0.1 ms: compute-bound.
    assert roof.predict_ms(1e9, 1e6) == pytest.approx(0.5 + 10.0)
    # 1e6 FLOPs = 0.01 ms; 1e9 bytes = 100 ms: memory-bound.
    assert roof.predict_ms(1e6, 1e9) == pytest.approx(0.5 + 100.0)
    assert roof.predict_ms(0, 0) == pytest.approx(0.5)


def test_grouped_convolutions_use_their_own_rate():
    roof = Roofline(gflops=100.0, bandwidth_gbs=1e6, grouped_gflops=5.0)
    assert roof.predict_ms(1e9, 0, kind="grouped") == pytest.approx(200.0)
    assert roof.predict_ms(1e9, 0, kind="gemm") == pytest.approx(10.0)
    assert Roofline(gflops=100.0, bandwidth_gbs=1.0).predict_ms(1e9, 0, kind="grouped") == (
        pytest.approx(10.0))


def test_windowed_pooling_uses_its_own_rate_and_global_pooling_does_not():
    model = nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1))
    cost = count_forward(model, (8, 16, 16))
    assert [layer.kind for layer in cost.layers] == ["pool", "pool", "memory"]
    roof = Roofline(gflops=100.0, bandwidth_gbs=100.0, pool_gbs=1.0)
    assert roof.predict_ms(0, 1e6, kind="pool") == pytest.approx(1.0)  # 1 MB at 1 GB/s
    assert roof.predict_ms(0, 1e6, kind="memory") == pytest.approx(0.01)
    host = Roofline(gflops=200.0, bandwidth_gbs=10.0, pool_gbs=2.0)
    device = Roofline.from_profile(load_profile("rpi4"), like=host)
    # Pooling loops are bound by instructions: the device's rate follows its GFLOP/s.
    assert device.pool_gbs == pytest.approx(device.gflops / 100)


def test_bandwidth_curve_interpolates_in_log_log_and_clamps():
    roof = Roofline(gflops=1.0, bandwidth_gbs=4.0, bandwidth_curve=((1e6, 100.0), (1e8, 4.0)))
    assert roof.bandwidth_at(1e3) == 100.0
    assert roof.bandwidth_at(1e9) == 4.0
    assert roof.bandwidth_at(1e7) == pytest.approx(math.sqrt(100.0 * 4.0))
    assert Roofline(gflops=1.0, bandwidth_gbs=4.0).bandwidth_at(1e3) == 4.0


def test_forward_prediction_is_the_sum_of_per_layer_rooflines():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8))
    cost = count_forward(model, (3, 16, 16), batch=1)
    roof = Roofline(gflops=10.0, bandwidth_gbs=1.0, overhead_ms=0.01, grouped_gflops=1.0)
    for batch in (1, 4):
        expected = sum(roof.predict_ms(layer.flops * batch, layer.bytes_moved(batch),
                                       kind=layer.kind) for layer in cost.layers)
        assert roof.predict_forward_ms(cost, batch=batch) == pytest.approx(expected)
    assert roof.predict_forward_ms(cost, batch=4) > roof.predict_forward_ms(cost, batch=1)


def test_roofline_from_profile_and_from_the_host_ratio():
    profile = load_profile("cpu")
    roof = Roofline.from_profile(profile)
    assert roof.gflops == profile.device.sustained_gflops
    assert roof.bandwidth_gbs == profile.device.memory_bandwidth_gbs
    assert roof.grouped_gflops is None and roof.overhead_ms == 0
    host = Roofline(gflops=200.0, bandwidth_gbs=10.0, overhead_ms=0.02, grouped_gflops=10.0)
    like = Roofline.from_profile(profile, like=host)
    assert like.grouped_gflops == pytest.approx(profile.device.sustained_gflops / 20)
    assert like.overhead_ms == 0.02


@pytest.mark.parametrize("kwargs", [
    {"gflops": 0.0, "bandwidth_gbs": 1.0},
    {"gflops": 1.0, "bandwidth_gbs": float("nan")},
    {"gflops": 1.0, "bandwidth_gbs": 1.0, "overhead_ms": -1.0},
    {"gflops": 1.0, "bandwidth_gbs": 1.0, "grouped_gflops": -2.0},
    {"gflops": 1.0, "bandwidth_gbs": 1.0, "bandwidth_curve": ((2.0, 1.0), (1.0, 1.0))},
])
def test_bad_roofline_is_a_usage_error(kwargs):
    with pytest.raises(UsageError):
        Roofline(**kwargs)


def test_host_rates_are_positive_plausible_and_quick():
    threads = torch.get_num_threads()
    start = time.perf_counter()
    host = measure_host_rates(threads=1, seconds=0.2)
    assert time.perf_counter() - start < 5  # 0.2 s of probes, 4x that when calls are slow
    assert torch.get_num_threads() == threads
    # Loose: any machine from a Pi Zero to a workstation, busy or not.
    assert 0.05 < host.gflops < 10_000
    assert 0.001 < host.grouped_gflops < 10_000
    assert 0.01 < host.bandwidth_gbs < 10_000
    assert 0 < host.overhead_ms < 50
    assert 0.001 < host.pool_gbs < 10_000
    (small, fast), (large, slow) = host.bandwidth_curve
    assert small < large and fast >= slow == host.bandwidth_gbs


def test_a_busy_machine_is_reported(monkeypatch):
    import edgecl.runtime.cost as cost_module

    # Threads that got no CPU time at all: something else had the cores.
    monkeypatch.setattr(cost_module.time, "process_time", lambda: 0.0)
    with pytest.warns(EdgeclWarning, match="busy while calibrating"):
        measure_host_rates(threads=1, seconds=0.01)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "shape"), [("mobilenet", (3, 128, 128)), ("cnn", (3, 32, 32))])
def test_host_roofline_predicts_a_backbone_forward_within_2x(name, shape):
    """The issue's target, for the 128x128 MobileNet's frozen part on 2 threads, and the
    32x32 CNN (its max pooling, priced as plain memory traffic, was off by 3-5x). Timing on
    a busy machine says nothing, so it skips when the threads did not get their cores:
    ``OMP_NUM_THREADS=2 pytest -m slow tests/runtime/test_cost.py -k backbone_forward``."""
    import warnings

    from edgecl.backbones import create_backbone, split_model

    threads = 2
    torch.manual_seed(0)
    backbone = create_backbone(name, input_shape=shape, n_classes=50)
    frozen = split_model(backbone.model, backbone.latent_layer).frozen.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdgeclWarning)
        try:
            host = measure_host_rates(threads=threads)
        except EdgeclWarning as busy:
            pytest.skip(str(busy))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch, repeats in ((1, 30), (32, 5)):
            predicted = host.predict_forward_ms(count_forward(frozen, shape, batch=batch))
            x = torch.randn(batch, *shape)
            times = []
            with torch.no_grad():
                frozen(x)
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(repeats):
                    start = time.perf_counter()
                    frozen(x)
                    times.append((time.perf_counter() - start) * 1e3)
                share = (time.process_time() - cpu) / ((time.perf_counter() - wall) * threads)
            if share < 0.8:
                pytest.skip(f"machine busy while timing: threads ran {share:.0%} of the time")
            measured = statistics.median(times)
            assert 0.5 < measured / predicted < 2, (batch, measured, predicted, host)
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- update cost

TRUE = UpdateCoefficients(backbone_ms_per_sample=0.8, step_fixed_ms=0.5,
                          step_ms_per_sample=0.03, store_ms=0.3)


def true_ms(n_new: int, replay: int, steps: int) -> float:
    return (TRUE.backbone_ms_per_sample * n_new
            + steps * (TRUE.step_fixed_ms + TRUE.step_ms_per_sample * (n_new + replay))
            + TRUE.store_ms)


def random_shape(rng: np.random.Generator) -> tuple[int, int, int]:
    return int(rng.integers(1, 33)), int(rng.integers(0, 65)), int(rng.integers(1, 5))


GRID = [(n, r, s) for n in (1, 8, 32) for r in (0, 16, 64) for s in (1, 2, 4)]


def observe_random(model: UpdateCostModel, rng: np.random.Generator, n: int, *,
                   slowdown: float = 1.0, noise: float = 0.05) -> None:
    """``n`` updates of random shapes on the TRUE machine (``slowdown`` times slower), with
    log-normal timing noise."""
    for _ in range(n):
        shape = random_shape(rng)
        model.observe(*shape, slowdown * true_ms(*shape) * math.exp(rng.normal(0, noise)))


def worst_relative_error(model: UpdateCostModel) -> float:
    return max(abs(model.predict_ms(*shape) / true_ms(*shape) - 1) for shape in GRID)


def test_prediction_is_the_linear_formula():
    model = UpdateCostModel(TRUE)
    assert model.predict_ms(4, 16, 2) == pytest.approx(true_ms(4, 16, 2))
    # Steps that see only part of the new data (an experience cut in mini-batches).
    assert model.predict_ms(64, 32, 2, n_new_per_step=32) == pytest.approx(
        0.8 * 64 + 2 * (0.5 + 0.03 * 64) + 0.3)


@pytest.mark.parametrize("prior", [
    UpdateCoefficients(0.2, 0.05, 0.02, 0.01),  # 3-10x too fast, wrong shape
    UpdateCoefficients(3.0, 2.0, 0.1, 1.0),  # 3-4x too slow
])
def test_converges_to_the_true_cost_of_the_machine(prior):
    model = UpdateCostModel(prior)
    assert worst_relative_error(model) > 0.6
    rng = np.random.default_rng(0)
    for i in range(60):
        shape = random_shape(rng)
        model.observe(*shape, true_ms(*shape) * math.exp(rng.normal(0, 0.05)))
        if i == 4:  # one number, the scale, is right after a few observations
            assert statistics.median(model.predict_ms(*s) / true_ms(*s) for s in GRID) == (
                pytest.approx(1, abs=0.2))
    fresh = [random_shape(rng) for _ in range(50)]
    errors = [abs(model.predict_ms(*s) / true_ms(*s) - 1) for s in fresh]
    assert statistics.median(errors) < 0.05 and max(errors) < 0.2
    # Shapes unlike those observed (tiny updates where fixed costs dominate) are
    # extrapolations, and less sure; most of the grid is still close.
    assert statistics.median(abs(model.predict_ms(*s) / true_ms(*s) - 1) for s in GRID) < 0.08


def test_converges_on_the_shapes_a_scheduler_repeats():
    model = UpdateCostModel(UpdateCoefficients(0.2, 0.05, 0.02, 0.01))
    rng = np.random.default_rng(1)
    for _ in range(30):
        shape = (1, int(rng.integers(20, 33)), 1)
        model.observe(*shape, true_ms(*shape) * math.exp(rng.normal(0, 0.05)))
    for replay in range(20, 33):
        assert model.predict_ms(1, replay, 1) == pytest.approx(true_ms(1, replay, 1), rel=0.08)


def test_follows_a_machine_that_slows_down():
    model = UpdateCostModel(TRUE)
    rng = np.random.default_rng(5)
    observe_random(model, rng, 64)
    observe_random(model, rng, 48, slowdown=2)  # thermal throttling: twice as long
    fresh = [random_shape(rng) for _ in range(50)]
    assert statistics.median(model.predict_ms(*s) / (2 * true_ms(*s)) for s in fresh) == (
        pytest.approx(1, abs=0.1))


def test_one_huge_outlier_does_not_wreck_the_model():
    model = UpdateCostModel(TRUE)
    rng = np.random.default_rng(2)
    observe_random(model, rng, 60)
    before = [model.predict_ms(*s) for s in GRID]
    margin = model.margin()
    model.observe(4, 16, 1, true_ms(4, 16, 1) + 50.0)  # a 50 ms GC pause
    after = [model.predict_ms(*s) for s in GRID]
    assert max(abs(a / b - 1) for a, b in zip(after, before, strict=True)) < 0.05
    assert model.margin() == pytest.approx(margin, rel=0.1)


def test_margin_is_a_quantile_of_measured_over_predicted():
    model = UpdateCostModel(TRUE)
    assert model.margin() == model.default_margin  # nothing observed yet
    rng = np.random.default_rng(3)
    sigma = 0.1
    shapes = [random_shape(rng) for _ in range(400)]
    noise = rng.normal(0, sigma, size=len(shapes))
    for shape, eps in zip(shapes[:300], noise[:300], strict=True):
        model.observe(*shape, true_ms(*shape) * math.exp(eps))
    # Log-normal errors of sigma 0.1: the 99th percentile of the ratio is exp(2.33 sigma).
    assert model.margin(0.99) == pytest.approx(math.exp(2.326 * sigma), rel=0.08)
    assert model.margin(0.5) == pytest.approx(1.0, abs=0.03)
    # Out of sample: about 10 % of new updates run past prediction x margin(0.9).
    m90 = model.margin(0.9)
    over = [true_ms(*s) * math.exp(e) > model.predict_ms(*s) * m90
            for s, e in zip(shapes[300:], noise[300:], strict=True)]
    assert 0.02 < sum(over) / len(over) < 0.2


def test_state_dict_round_trip_through_json():
    model = UpdateCostModel(UpdateCoefficients(0.2, 0.05, 0.02, 0.01), window=32)
    rng = np.random.default_rng(4)
    # Refits after each of the first 32 observations, then at 40: 4 since the last.
    observe_random(model, rng, 44, noise=0.1)
    restored = UpdateCostModel(TRUE)
    restored.load_state_dict(json.loads(json.dumps(model.state_dict())))
    assert restored.window == 32 and restored.n_observed == 44
    assert restored.coefficients == model.coefficients
    assert restored.margin() == model.margin()
    shape = random_shape(rng)
    model.observe(*shape, 10.0)
    restored.observe(*shape, 10.0)
    assert restored.coefficients == model.coefficients


def _state(**changes):
    state = {"version": 1, "prior": [1, 1, 1, 1], "window": 64, "default_margin": 1.5,
             "n_observed": 1, "observations": [[1, 1, 1, 3.0]]}
    state.update(changes)
    return state


@pytest.mark.parametrize("garbage", [
    None, [], "state", {"version": 2}, {"version": 1},
    _state(prior=[1, 2, 3]),
    _state(prior=[-1, 1, 1, 1]),
    _state(prior=[1, 1, float("nan"), 1]),
    _state(window=2),
    _state(window="64"),
    _state(n_observed=-1),
    _state(observations=[[1, 1, 1, "x"]]),
    _state(observations=[[1, 1, 1]]),
    _state(observations=[[1, 1, 1, 0.0]]),
    _state(observations={"a": 1}),
    _state(default_margin=0.5),
    _state(coefficients=[1, 1, 1], unfitted=0),
    _state(coefficients=[1, 1, -1, 1], unfitted=0),
    _state(coefficients=[1, 1, 1, 1], unfitted=-1),
    _state(coefficients=[1, 1, 1, 1]),
])
def test_loading_garbage_raises_checkpoint_error(garbage):
    model = UpdateCostModel(TRUE)
    with pytest.raises(CheckpointError):
        model.load_state_dict(garbage)
    assert model.coefficients == TRUE  # unchanged


def test_a_state_without_the_fit_in_use_is_refitted():
    # States saved before refits became lazy hold the observations only.
    model = UpdateCostModel(TRUE)
    model.load_state_dict(_state())
    assert model.n_observed == 1
    # The prior (all 1) predicts 4 ms for the observed update that took 3: the fit scales it.
    assert model.coefficients != UpdateCoefficients(1, 1, 1, 1)
    assert model.predict_ms(1, 0, 1, n_new_per_step=1) < 4


def test_refits_are_eager_at_first_then_every_eighth_observation():
    model = UpdateCostModel(UpdateCoefficients(0.2, 0.05, 0.02, 0.01))
    fits = []
    for i in range(48):
        model.observe(4, 8, 1, 3.0 + (i % 3))
        fits.append(model.coefficients)
    changed = [i + 1 for i in range(1, 48) if fits[i] != fits[i - 1]]
    assert set(changed) <= set(range(2, 33)) | {40, 48}
    assert {40, 48} <= set(changed)


def test_bad_observations_and_priors_are_usage_errors():
    model = UpdateCostModel(TRUE)
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(UsageError):
            model.observe(1, 1, 1, bad)
    with pytest.raises(UsageError):
        model.predict_ms(-1, 0, 1)
    with pytest.raises(UsageError):
        UpdateCostModel(UpdateCoefficients(0, 0, 0, 0))


def test_prior_from_counts_of_a_real_backbone_and_head():
    from edgecl.backbones import create_backbone, split_model

    torch.manual_seed(0)
    backbone = create_backbone("cnn", input_shape=(1, 8, 8), n_classes=10)
    split = split_model(backbone.model, backbone.latent_layer)
    latent = tuple(split.frozen.eval()(torch.zeros(1, 1, 8, 8)).shape[1:])
    frozen_cost = count_forward(split.frozen, (1, 8, 8), batch=32)
    head_cost = count_forward(split.head, latent, batch=32)
    train = count_train_step(split.head, latent, batch=32) / 32
    roof = Roofline.from_profile(load_profile("cpu"))
    model = UpdateCostModel.from_counts(roof, backbone=frozen_cost, head=head_cost,
                                        train_flops_per_sample=train, backbone_batch=32)
    prior = model.prior
    assert prior.backbone_ms_per_sample == pytest.approx(
        roof.predict_forward_ms(frozen_cost, batch=32) / 32)
    assert prior.step_ms_per_sample >= train / (roof.gflops * 1e6)
    assert all(v >= 0 for v in prior.as_list())
    assert model.predict_ms(32, 32, 2) > model.predict_ms(32, 32, 1) > model.predict_ms(1, 0, 1)
