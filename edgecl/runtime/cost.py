"""What an update costs: FLOPs and bytes of a forward or a training step, a roofline that
turns them into milliseconds, and an online model of the wall time of one update.

    count_forward(module, shape)      FLOPs, parameters and activation bytes per sample
    count_train_step(head, shape)     FLOPs of forward + backward + SGD step, one mini-batch
    Roofline                          ms = overhead + max(FLOPs / rate, bytes / bandwidth)
    measure_host_rates(threads=...)   a Roofline calibrated on this machine in about a second
    UpdateCostModel                   ms of one update from its shape, corrected online

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts matrix
products and convolutions (forward and backward) at 2 FLOPs per multiply-add. It counts
every other op as 0 FLOPs: ReLU, BatchNorm, pooling, softmax, additions, the optimizer's
update. Those layers are bound by memory traffic, not arithmetic, so the roofline prices
them by the bytes they read and write instead; in the networks used here convolutions and
linear layers hold nearly all the arithmetic.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgecl.errors import CheckpointError, EdgeclWarning, UsageError

if TYPE_CHECKING:
    from edgecl.profiles import Profile

__all__ = [
    "LayerCost",
    "ModuleCost",
    "Roofline",
    "UpdateCoefficients",
    "UpdateCostModel",
    "count_forward",
    "count_train_step",
    "measure_host_rates",
]

# Layer kinds, each with its own compute rate in a Roofline. Dense convolutions and linear
# layers are matrix products ("gemm"). Grouped and depthwise convolutions do a few
# multiply-adds per value loaded and reuse nothing across channels, so they run one to two
# orders of magnitude below the GEMM rate on CPUs ("grouped"). Layers FlopCounterMode
# counts as 0 FLOPs (normalisation, activations, pooling) cost only memory traffic ("memory"),
# except windowed max and average pooling ("pool"): PyTorch's CPU kernels for them loop over
# each window and run about 100x below copy bandwidth (max_pool2d 2x2 on 8x32x32x32: 1.2 GB/s
# against 100 GB/s for a copy, here), so they get their own measured rate. Adaptive (global)
# average pooling is a plain reduction and stays "memory".
LAYER_KINDS = ("gemm", "grouped", "pool", "memory")
_WINDOW_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)


# --------------------------------------------------------------------------- counting


@dataclass(frozen=True)
class LayerCost:
    """One leaf module of a counted forward. Byte counts are per sample except weights."""

    name: str
    kind: str  # "gemm" | "grouped" | "memory" (see LAYER_KINDS)
    flops: int  # per sample
    weight_bytes: int  # parameters and buffers the layer reads, once per batch
    input_bytes: int  # per sample
    output_bytes: int  # per sample

    def bytes_moved(self, batch: int) -> int:
        """Bytes read and written by one call on ``batch`` samples."""
        return self.weight_bytes + batch * (self.input_bytes + self.output_bytes)


@dataclass(frozen=True)
class ModuleCost:
    """Cost of one forward pass of a module, per sample unless said otherwise."""

    flops: int  # per sample (FlopCounterMode; 0 for ReLU, BatchNorm, pooling)
    params: int  # number of parameters
    param_bytes: int  # bytes of the parameters
    activation_bytes: int  # per sample: every leaf module's output, what a forward writes
    peak_activation_bytes: int  # per sample: the largest input + output of one leaf module
    # Per sample, for a roofline at ``batch``: each leaf's weights (and buffers) read once
    # per batch and divided by it, plus its input read and its output written. Layers run
    # one after another in eager mode, so an activation is written by one layer and read
    # again by the next; caches may absorb some of that, so this is an upper estimate.
    bytes_moved: float
    batch: int  # batch the counts were taken at
    layers: tuple[LayerCost, ...]  # leaf modules in call order, for a per-layer roofline

    def flops_by_kind(self) -> dict[str, int]:
        """Per-sample FLOPs split by layer kind (gemm, grouped, memory)."""
        out = dict.fromkeys(LAYER_KINDS, 0)
        for layer in self.layers:
            out[layer.kind] += layer.flops
        return out


def count_forward(module: nn.Module, input_shape: tuple[int, ...], *, batch: int = 1
                  ) -> ModuleCost:
    """FLOPs, parameters and activation bytes of ``module`` on inputs of ``input_shape``
    (without the batch dimension), counted on a deep copy in eval mode without gradients.

    The caller's module is left untouched: not its mode, not its statistics.
    """
    if batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    model = copy.deepcopy(module).eval()
    x = _zeros(model, (batch, *input_shape))
    with torch.no_grad():
        total, layers = _count_layers(model, x)
    per_sample = [_per_sample(layer, batch) for layer in layers]
    leaf_flops = sum(layer.flops for layer in layers)
    if total > leaf_flops:  # arithmetic in a parent's forward (torch.matmul, F.linear ...)
        per_sample.append(LayerCost("(functional)", "gemm", round((total - leaf_flops) / batch),
                                    0, 0, 0))
    params = list(model.parameters())
    return ModuleCost(
        flops=round(total / batch),
        params=sum(p.numel() for p in params),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        activation_bytes=sum(layer.output_bytes for layer in per_sample),
        peak_activation_bytes=max((layer.input_bytes + layer.output_bytes
                                   for layer in per_sample), default=0),
        bytes_moved=sum(layer.bytes_moved(batch) for layer in per_sample) / batch,
        batch=batch,
        layers=tuple(per_sample),
    )


def count_train_step(head: nn.Module, latent_shape: tuple[int, ...], *, batch: int) -> int:
    """FLOPs of one training step of ``head`` on a mini-batch of ``batch`` latents: forward,
    cross-entropy backward, and a plain SGD update, on a deep copy (the caller's parameters,
    gradients and statistics stay as they were).

    Backward is counted by FlopCounterMode: for each linear or convolutional layer, one
    product for the weight gradient and, except for the first layer (latents need no
    gradient), one for the input gradient. So a single linear head costs 2x its forward,
    deeper heads approach 3x. FlopCounterMode counts the optimizer as 0; SGD's ``p -= lr * g``
    is added here as 2 FLOPs per trainable parameter (momentum and weight decay add a few
    more per parameter, negligible next to the products).
    """
    if batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    model = copy.deepcopy(head).train()
    if batch == 1:  # one sample has no batch statistics; the learner does the same
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0) if params else None
    x = _zeros(model, (batch, *latent_shape))
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if params:
            if out.ndim == 2:
                target = torch.zeros(batch, dtype=torch.long, device=out.device)
                loss = F.cross_entropy(out, target)
            else:
                loss = out.float().square().mean()
            loss.backward()
            optimizer.step()
    return int(counter.get_total_flops()) + 2 * sum(p.numel() for p in params)


def _zeros(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    reference = next(iter(model.parameters()), None)
    if reference is None:
        reference = next(iter(model.buffers()), None)
    if reference is None or not reference.is_floating_point():
        return torch.zeros(shape)
    return torch.zeros(shape, dtype=reference.dtype, device=reference.device)


def _count_layers(model: nn.Module, x: torch.Tensor) -> tuple[int, list[LayerCost]]:
    """Run ``model(x)`` under a FlopCounterMode; each leaf module's FLOPs are the counter's
    growth across its forward (leaves do not nest, so the differences are exact)."""
    counter = FlopCounterMode(display=False)
    layers: list[LayerCost] = []
    started: dict[int, tuple[int, int]] = {}

    def before(m: nn.Module, args: tuple[Any, ...]) -> None:
        started[id(m)] = (counter.get_total_flops(), _nbytes(args))

    def after(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(m: nn.Module, args: Any, output: Any) -> None:
            flops_before, in_bytes = started.pop(id(m))
            flops = counter.get_total_flops() - flops_before
            layers.append(LayerCost(name, _kind(m, flops), flops, _weight_bytes(m), in_bytes,
                                    _nbytes(output)))
        return hook

    handles = []
    for name, m in model.named_modules():
        if next(m.children(), None) is None:  # a leaf
            handles.append(m.register_forward_pre_hook(before))
            handles.append(m.register_forward_hook(after(name or type(m).__name__)))
    try:
        with counter:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return int(counter.get_total_flops()), layers


def _kind(module: nn.Module, flops: int) -> str:
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        return "grouped"
    if isinstance(module, _WINDOW_POOLS):
        return "pool"
    return "gemm" if flops > 0 else "memory"


def _weight_bytes(module: nn.Module) -> int:
    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def _per_sample(layer: LayerCost, batch: int) -> LayerCost:
    return LayerCost(layer.name, layer.kind, round(layer.flops / batch), layer.weight_bytes,
                     round(layer.input_bytes / batch), round(layer.output_bytes / batch))


# --------------------------------------------------------------------------- roofline




@dataclass(frozen=True)
class Roofline:
    """Milliseconds from FLOPs and bytes: ``overhead + max(flops / rate, bytes / bandwidth)``.

    The classic roofline (Williams, Waterman and Patterson 2009) takes the max, not the sum:
    a kernel streams its operands while it computes, so it is limited by whichever of the
    arithmetic units or the memory system saturates first. The max is a lower bound on time;
    a kernel that neither computes nor streams at full rate lands above it.

    Two refinements, both optional, so that a profile's two numbers still make a roofline:

    - ``grouped_gflops``: the rate of grouped and depthwise convolutions, which reach a small
      fraction of the GEMM rate (see LAYER_KINDS). None prices them at ``gflops``.
    - ``pool_gbs``: the rate, in bytes read and written per second, of windowed max and
      average pooling, far below the bandwidth (see LAYER_KINDS). None: the bandwidth.
    - ``bandwidth_curve``: measured (bytes moved per call, GB/s) points. A call that moves
      few bytes stays in cache and is much faster than one that streams from DRAM (the
      cache-aware roofline of Ilic, Pratas and Sousa 2014); between points the bandwidth is
      interpolated in log-log, outside them it is the nearest point's. Empty: one
      ``bandwidth_gbs`` for every size.

    ``overhead_ms`` is the fixed cost of one call (one layer in :meth:`predict_forward_ms`):
    dispatch, allocation, thread wake-up. It dominates tiny layers.
    """

    gflops: float  # sustained fp32 rate of dense matrix products
    bandwidth_gbs: float  # sustained memory bandwidth for large (DRAM-sized) transfers
    overhead_ms: float = 0.0  # fixed cost per call
    grouped_gflops: float | None = None  # rate of grouped/depthwise convolutions
    bandwidth_curve: tuple[tuple[float, float], ...] = ()  # (bytes per call, GB/s), by bytes
    pool_gbs: float | None = None  # rate of windowed pooling, bytes in and out per second

    def __post_init__(self) -> None:
        rates = {"gflops": self.gflops, "bandwidth_gbs": self.bandwidth_gbs}
        if self.grouped_gflops is not None:
            rates["grouped_gflops"] = self.grouped_gflops
        if self.pool_gbs is not None:
            rates["pool_gbs"] = self.pool_gbs
        for i, point in enumerate(self.bandwidth_curve):
            if len(point) != 2:
                raise UsageError(f"Roofline bandwidth_curve[{i}] must be (bytes, GB/s), "
                                 f"got {point!r}")
            rates[f"bandwidth_curve[{i}] bytes"], rates[f"bandwidth_curve[{i}] GB/s"] = point
        for name, value in rates.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(f"Roofline {name} must be a positive number, got {value!r}")
        sizes = [b for b, _ in self.bandwidth_curve]
        if sizes != sorted(set(sizes)):
            raise UsageError("Roofline bandwidth_curve must be sorted by bytes, without repeats")
        if not (math.isfinite(self.overhead_ms) and self.overhead_ms >= 0):
            raise UsageError(f"Roofline overhead_ms must be >= 0, got {self.overhead_ms}")

    def bandwidth_at(self, bytes_moved: float) -> float:
        """GB/s for a call that moves ``bytes_moved`` bytes."""
        curve = self.bandwidth_curve
        if not curve:
            return self.bandwidth_gbs
        if bytes_moved <= curve[0][0]:
            return curve[0][1]
        for (b0, g0), (b1, g1) in zip(curve, curve[1:], strict=False):
            if bytes_moved <= b1:
                t = math.log(bytes_moved / b0) / math.log(b1 / b0)
                return g0 * (g1 / g0) ** t
        return curve[-1][1]

    def predict_ms(self, flops: float, bytes_moved: float, *, kind: str = "gemm") -> float:
        """Time of one call doing ``flops`` FLOPs and moving ``bytes_moved`` bytes."""
        rate = self.grouped_gflops if kind == "grouped" and self.grouped_gflops else self.gflops
        compute_ms = flops / (rate * 1e6)  # GFLOP/s = 1e6 FLOP/ms
        bandwidth = self.bandwidth_at(bytes_moved)
        if kind == "pool" and self.pool_gbs:
            bandwidth = min(bandwidth, self.pool_gbs)
        memory_ms = bytes_moved / (bandwidth * 1e6)
        return self.overhead_ms + max(compute_ms, memory_ms)

    def predict_forward_ms(self, cost: ModuleCost, *, batch: int | None = None) -> float:
        """Time of one forward of the counted module on ``batch`` samples (default: the
        batch it was counted at), as the sum of a roofline per layer.

        Eager execution runs one layer after the other, so compute-bound layers (dense
        convolutions) and memory-bound ones (BatchNorm, ReLU, depthwise convolutions at
        low arithmetic intensity) do not overlap: the sum of per-layer maxima is the right
        bound, where one max over the whole network's FLOPs and bytes would assume they do.
        """
        b = cost.batch if batch is None else batch
        return sum(self.predict_ms(layer.flops * b, layer.bytes_moved(b), kind=layer.kind)
                   for layer in cost.layers)

    @classmethod
    def from_profile(cls, profile: Profile, *, like: Roofline | None = None) -> Roofline:
        """The roofline of a firmware profile's device (``profile.device``'s
        ``sustained_gflops`` and ``memory_bandwidth_gbs``).

        A profile states those two numbers only. With ``like`` (a measured roofline, usually
        the host's), the profile's grouped-convolution and pooling rates take the host's
        ratio to its GEMM rate (pooling loops are bound by instructions, not by memory), and
        its per-call overhead the host's: all depend mostly on the software
        stack (the same PyTorch kernels), which the host shares; a slower board's overhead
        is larger, so this stays a lower bound. Cache behaviour does not transfer between
        chips, so the profile gets one bandwidth for every size. Without ``like``, grouped
        convolutions run at the GEMM rate and calls cost nothing fixed: optimistic.
        """
        device = profile.device
        gflops = float(device.sustained_gflops)
        grouped = pool = None
        overhead = 0.0
        if like is not None:
            overhead = like.overhead_ms
            if like.grouped_gflops is not None:
                grouped = gflops * like.grouped_gflops / like.gflops
            if like.pool_gbs is not None:
                pool = gflops * like.pool_gbs / like.gflops
        return cls(gflops=gflops, bandwidth_gbs=float(device.memory_bandwidth_gbs),
                   overhead_ms=overhead, grouped_gflops=grouped, pool_gbs=pool)


def measure_host_rates(*, threads: int, seconds: float = 0.5) -> Roofline:
    """Calibrate a Roofline on this machine with ``threads`` intra-op threads.

    Every rate is probed at two sizes, one like a layer at batch 1 and one like a layer at
    a batch of several samples, and the slower is kept: edge workloads run small layers at
    small batches, which sustain less than the peak of large ones, and a rate too high
    makes every prediction too low.

    - per-call overhead: a 1x1 convolution of 8 channels on a 4x4 map, nearly no work;
    - GEMM: fp32 ``torch.mm`` of 128x256 @ 256x256 (a head's step, a late pointwise
      convolution at batch 1) and 1024x512 @ 512x512 (a pointwise convolution at batch 4);
    - grouped: 3x3 depthwise convolutions of 128 channels on 32x32 maps, batch 1 and 8;
    - pooling: 2x2 max pooling of 32 channels on 32x32 maps, batch 1 and 8 (bytes in + out);
    - bandwidth: copying into freshly allocated tensors (as every eager op writes its output
      into new memory), of 1 MiB (stays in cache; eight copies per probe call) and 64 MiB
      (streams from DRAM and, above the allocator's mmap threshold, pays page faults as big
      eager activations do). These give the two points of ``bandwidth_curve``;
      ``bandwidth_gbs`` is the large one.

    The probes run in rounds, two calls each per round (the second timed), for about
    ``seconds`` (at least 3 rounds, at most 4 x ``seconds`` when calls are slow), and each
    keeps its fastest call. The fastest, not the median: on a machine shared with other
    work the median measures the neighbours (two threads on two busy cores wait for each
    other at every barrier), while the fastest call is what this machine does with the work
    to itself; rounds spread every probe over the whole window, so one burst of other work
    cannot spoil one probe. (How busy the machine really is, UpdateCostModel learns online.)
    When the busy spell lasts the whole calibration, nothing saves it: an EdgeclWarning says
    so when the threads got under 80 % of their cores' time.
    The overhead is subtracted from each probe before its rate is taken. Under 2 s for the
    default ``seconds``.
    """
    if threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            probes, work = _host_probes()
            wall, cpu = time.perf_counter(), time.process_time()
            best = _fastest_in_rounds(probes, max(seconds, 0.01))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        torch.set_num_threads(before)
    # On a machine to itself the threads run nearly all the time (over 90 % here); when
    # other work competes for the cores, they run only part of it, and when that lasts for
    # the whole calibration even the fastest calls are slow.
    share = cpu / max(wall * threads, 1e-9)
    if share < 0.8:
        warnings.warn(EdgeclWarning(
            f"the machine was busy while calibrating host rates: {threads} thread(s) ran "
            f"{share:.0%} of the time, so the rates may be far too low; measure again when "
            "it is idle"), stacklevel=2)
    overhead_s = best["overhead"]

    def rate(name: str) -> float:  # work per second beyond the fixed overhead
        return work[name] / max(best[name] - overhead_s, 1e-9)

    gemm = min(rate("gemm-small"), rate("gemm-large"))
    grouped = min(rate("depthwise-small"), rate("depthwise-large"))
    pool = min(rate("pool-small"), rate("pool-large"))
    small = (work["copy-small"] / 8, rate("copy-small") / 1e9)  # bytes of one of the copies
    # A large copy faster than a small one is noise; it would bend the curve upward.
    large = (work["copy-large"], min(rate("copy-large") / 1e9, small[1]))
    return Roofline(gflops=gemm / 1e9, bandwidth_gbs=large[1], overhead_ms=overhead_s * 1e3,
                    grouped_gflops=grouped / 1e9, bandwidth_curve=(small, large),
                    pool_gbs=pool / 1e9)


def _host_probes() -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """The calls measure_host_rates times, and the work (FLOPs or bytes) each does."""
    probes: dict[str, Callable[[], object]] = {}
    work: dict[str, float] = {}
    tiny_conv, tiny = nn.Conv2d(8, 8, 1).eval(), torch.zeros(1, 8, 4, 4)
    probes["overhead"], work["overhead"] = (lambda: tiny_conv(tiny)), 0.0
    for name, (m, k, n) in {"gemm-small": (128, 256, 256),
                            "gemm-large": (1024, 512, 512)}.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        probes[name], work[name] = partial(torch.mm, a, b), 2.0 * m * k * n
    weight = torch.randn(128, 1, 3, 3)
    for name, batch in {"depthwise-small": 1, "depthwise-large": 8}.items():
        x = torch.randn(batch, 128, 32, 32)
        probes[name] = partial(F.conv2d, x, weight, padding=1, groups=128)
        work[name] = 2.0 * 9 * x.numel()
    for name, batch in {"pool-small": 1, "pool-large": 8}.items():
        x = torch.randn(batch, 32, 32, 32)
        probes[name] = partial(F.max_pool2d, x, 2)
        work[name] = 1.25 * x.numel() * x.element_size()  # reads x, writes a quarter of it
    for name, (mib, repeats) in {"copy-small": (1, 8), "copy-large": (64, 1)}.items():
        x = torch.ones(mib * 2**18)  # fp32
        # A 1 MiB copy takes about as long as the per-call overhead: eight in one probe
        # call keep the overhead that is subtracted from it small.
        probes[name] = partial(_clone_repeatedly, x, repeats)
        work[name] = repeats * 2.0 * x.numel() * x.element_size()  # read + write
    return probes, work


def _clone_repeatedly(x: torch.Tensor, repeats: int) -> None:
    for _ in range(repeats):
        x.clone()


def _fastest_in_rounds(probes: Mapping[str, Callable[[], object]], seconds: float
                       ) -> dict[str, float]:
    """Fastest call of each probe, in seconds, over rounds of two calls per probe (the
    second is timed)."""
    for fn in probes.values():
        fn()  # warm-up: first-call allocation, kernel selection
    best = dict.fromkeys(probes, math.inf)
    start = time.perf_counter()
    for round_ in range(10_000):
        for name, fn in probes.items():
            fn()  # after another probe: caches and thread pool back to this one's state
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if (round_ >= 2 and spent >= seconds) or spent >= 4 * seconds:
            break
    return best


# --------------------------------------------------------------------------- update cost


@dataclass(frozen=True)
class UpdateCoefficients:
    """The four coefficients of the linear update-time model, in ms (see UpdateCostModel)."""

    backbone_ms_per_sample: float  # frozen forward, per new sample
    step_fixed_ms: float  # per optimizer step: dispatch, loss, zero_grad, optimizer update
    step_ms_per_sample: float  # per sample in a step's mini-batch: forward + backward
    store_ms: float  # per update: adding the new latents to the buffer, bookkeeping

    def as_list(self) -> list[float]:
        return [self.backbone_ms_per_sample, self.step_fixed_ms, self.step_ms_per_sample,
                self.store_ms]


class UpdateCostModel:
    """Wall time (ms) of one update, from its shape, corrected online on this machine.

    An update learns ``n_new`` new samples in ``n_steps`` optimizer steps; each step sees
    ``n_new_per_step`` new samples (by default all of them: one mini-batch of new data, as
    in an online stream) and ``n_replay_per_step`` replayed latents::

        ms = backbone_ms_per_sample * n_new
           + n_steps * (step_fixed_ms + step_ms_per_sample * (n_new_per_step + n_replay))
           + store_ms

    Linear in the four coefficients, which start at a *prior* (from FLOP counts and a
    Roofline: :meth:`from_counts`) and are refitted (after each of the first 32
    :meth:`observe` calls, then every 8th) on the last ``window`` observations, recent ones
    weighted more (the weight halves every 16 observations back, about 24 observations'
    worth in all):

    1. Scale: the weighted median of measured / prior-predicted. One number, robust to
       outliers, right after a few observations: a machine 3x slower than its roofline is
       corrected at once, whatever plan shapes the scheduler chose.
    2. Shape: a Bayesian ridge regression of the measurements on the four features, with
       the scaled prior as prior mean (each coefficient good to about a factor of 2) and
       residuals taken relative to the update's size (timing noise is multiplicative). The
       prior decides the directions that recent plans leave open (when every update has
       one step, fixed and per-step costs cannot be told apart); the data decides the rest.
       Tukey biweight reweighting (3 rounds, cut-off 4.685 robust standard deviations)
       gives an observation far slower than the fit no weight at all, so a GC pause or a
       preemption does not move the model; a lasting slowdown does, through the scale,
       once it holds about half the weight (15-40 observations for a 2x slowdown). Runs
       faster than the fit keep their weight: interference only ever adds time.
       Coefficients are kept non-negative.

    A sliding, weighted window rather than recursive least squares with a forgetting
    factor: with the poorly varied inputs a scheduler produces, RLS's covariance winds up
    in the unexcited directions, after which one outlier can throw the estimate far; and
    a refit of 4 coefficients over 64 observations costs about 0.2 ms, which every 8th
    update can afford.

    :meth:`margin` gives a quantile of measured / predicted over the window, for planning
    with a safety margin. No clock and no randomness inside: time comes in through
    observe.
    """

    # Tukey biweight cut-off, in robust standard deviations of the relative residuals
    # (the usual constant: 95 % efficiency when the noise is Gaussian).
    _TUKEY = 4.685
    # Observations this many updates old count half as much as the latest.
    _HALF_LIFE = 16
    # Relative standard deviation of the prior coefficients once scaled: roughly a factor
    # of 2 either way, what a roofline gets wrong about one layer kind against another.
    _PRIOR_SPREAD = 1.0
    # Before this many observations, margin() returns default_margin.
    _MIN_FOR_MARGIN = 8
    # Refit after each of the first _EAGER_REFITS observations, then every REFIT_EVERY.
    _EAGER_REFITS = 32
    REFIT_EVERY = 8

    def __init__(self, prior: UpdateCoefficients, *, window: int = 64,
                 default_margin: float = 1.5) -> None:
        values = prior.as_list()
        if not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
            raise UsageError(f"prior coefficients must be finite, >= 0 and not all 0, got {prior}")
        if window < 16:
            raise UsageError(f"window must be >= 16 observations, got {window}")
        if not (math.isfinite(default_margin) and default_margin >= 1):
            raise UsageError(f"default_margin must be >= 1, got {default_margin}")
        self.prior = prior
        self.window = int(window)
        self.default_margin = float(default_margin)
        self.n_observed = 0
        # [n_new, n_steps, n_steps * samples per step, measured ms]: the features and y.
        self._obs: list[list[float]] = []
        self._coefficients = tuple(float(v) for v in values)  # the fit in use
        self._margins: dict[float, float] = {}
        self._unfitted = 0  # observations since the last refit

    @classmethod
    def from_counts(cls, roofline: Roofline, *, backbone: ModuleCost, head: ModuleCost,
                    train_flops_per_sample: float, backbone_batch: int = 1,
                    window: int = 64, default_margin: float = 1.5) -> UpdateCostModel:
        """A prior from FLOP and byte counts priced by ``roofline`` (a profile's or the host's).

        - backbone: the per-layer roofline of the frozen part at ``backbone_batch``, per sample;
        - per sample of a step: the training FLOPs (``count_train_step(...) / batch``) at
          the GEMM rate, or, if slower, the head's activations moved three times (forward
          writes, backward reads and writes) at the bandwidth;
        - per step: three calls per head layer (forward and two backward products) and six
          more (loss, its backward, zero_grad, the optimizer) at the per-call overhead, plus
          the optimizer reading and writing parameters and gradients (4x param_bytes);
        - store: four calls' overhead (encode, copy, labels, bookkeeping).

        The fixed costs are the least certain part of the prior (Python overhead is not in
        any roofline); the online refit corrects them first. ``window`` and
        ``default_margin`` are the constructor's.
        """
        if backbone_batch < 1:
            raise UsageError(f"backbone_batch must be >= 1, got {backbone_batch}")
        backbone_ms = roofline.predict_forward_ms(backbone, batch=backbone_batch) / backbone_batch
        head_act = 3 * sum(layer.input_bytes + layer.output_bytes for layer in head.layers)
        per_sample = max(train_flops_per_sample / (roofline.gflops * 1e6),
                         head_act / (roofline.bandwidth_at(head_act) * 1e6))
        optimizer_bytes = 4 * head.param_bytes
        fixed = (roofline.overhead_ms * (3 * len(head.layers) + 6)
                 + optimizer_bytes / (roofline.bandwidth_at(optimizer_bytes) * 1e6))
        store = roofline.overhead_ms * 4
        prior = UpdateCoefficients(backbone_ms_per_sample=backbone_ms, step_fixed_ms=fixed,
                                   step_ms_per_sample=per_sample, store_ms=store)
        return cls(prior, window=window, default_margin=default_margin)

    # -- prediction --------------------------------------------------------------------------
    @property
    def coefficients(self) -> UpdateCoefficients:
        """The current (fitted) coefficients."""
        return UpdateCoefficients(*self._coefficients)

    def predict_ms(self, n_new: int, n_replay_per_step: int, n_steps: int, *,
                   n_new_per_step: int | None = None) -> float:
        """Predicted wall time of one update of this shape."""
        # Plain floats: the scheduler's search calls this ~20 times a plan, and a numpy
        # dot product of 4 numbers costs ten times the arithmetic.
        n_new, n_steps, per_step_total = _feature_values(n_new, n_replay_per_step, n_steps,
                                                         n_new_per_step)
        backbone, fixed, per_sample, store = self._coefficients
        return max(backbone * n_new + fixed * n_steps + per_sample * per_step_total + store,
                   1e-6)

    def margin(self, quantile: float = 0.99) -> float:
        """A ``quantile`` of measured / predicted: plan against ``budget / margin`` and
        about ``1 - quantile`` of updates exceed the budget.

        From the log-errors of the current model on the window's observations, assumed
        log-normal and estimated robustly: the median for the centre; for the spread the
        larger of the median absolute deviation and the distance from the median up to the
        75th percentile (each scaled to a normal's standard deviation), times sqrt(n / (n -
        4)) for the 4 fitted coefficients. The upper spread sees a slow tail heavier than a
        normal's (a busy machine that often runs slow); runs faster than the model do not
        widen it. Both ignore rare outliers (GC pauses, preemptions of under 25 % of
        updates), which no plan avoids, as a pause costs the same however small the update:
        a margin inflated by one would shrink every update after it for nothing.

        The current model's errors, not those of the predictions made before each update:
        after a change of speed, those stay large until they leave the window although the
        model has caught up, and when the margin then leaves no update that fits, no new
        observation ever replaces them. Before 8 observations: ``default_margin``.
        """
        if not 0.5 <= quantile < 1:
            raise UsageError(f"quantile must be in [0.5, 1), got {quantile}")
        if quantile not in self._margins:  # cleared by observe: a plan asks for it every time
            self._margins[quantile] = self._margin(quantile)
        return self._margins[quantile]

    def _margin(self, quantile: float) -> float:
        n = len(self._obs)
        if n < self._MIN_FOR_MARGIN:
            return self.default_margin
        obs = np.asarray(self._obs)
        theta = np.asarray(self._coefficients)
        predicted = np.maximum(obs[:, :3] @ theta[:3] + theta[3], 1e-6)
        ordered = np.sort(np.log(obs[:, 3] / predicted))
        centre = _quantile(ordered, 0.5)
        mad = 1.4826 * _median(np.abs(ordered - centre))
        # A normal's 75th percentile is 0.6745 standard deviations above its median. The upper
        # quartile, not the 90th percentile: on a shared machine 10-25 % of updates can be
        # preempted (a few ms each, whatever their size), and a margin that followed them
        # jumped from 1.1 to 4-6, leaving no update that fits (tools/bench_budget.py).
        upper = (_quantile(ordered, 0.75) - centre) / 0.6745
        spread = max(mad, upper) * math.sqrt(n / (n - 4))
        return math.exp(centre + NormalDist().inv_cdf(quantile) * spread)

    # -- learning ----------------------------------------------------------------------------
    def observe(self, n_new: int, n_replay_per_step: int, n_steps: int, measured_ms: float, *,
                n_new_per_step: int | None = None) -> None:
        """Record the measured wall time of one update and refit."""
        measured = float(measured_ms)
        if not (math.isfinite(measured) and measured >= 0):
            raise UsageError(f"measured_ms must be a finite time >= 0, got {measured_ms!r}")
        measured = max(measured, 1e-6)  # a coarse clock can read 0
        self._obs.append([*map(float, _feature_values(n_new, n_replay_per_step, n_steps,
                                                      n_new_per_step)), measured])
        del self._obs[:-self.window]
        self.n_observed += 1
        self._margins.clear()  # the margin follows every observation (~30 us)
        self._unfitted += 1
        # A refit costs ~0.2 ms, a tenth of a small update: after the first observations
        # (where the prior may be far off) it runs every REFIT_EVERY updates. The robust fit
        # reacts to a lasting change over 15-40 observations anyway.
        if self.n_observed <= self._EAGER_REFITS or self._unfitted >= self.REFIT_EVERY:
            self._refit()

    def _refit(self) -> None:
        self._unfitted = 0
        obs = np.asarray(self._obs, dtype=float)
        x = np.column_stack([obs[:, :3], np.ones(len(obs))])
        y = obs[:, 3]
        prior = np.asarray(self.prior.as_list())
        prior_pred = np.maximum(x @ prior, 1e-9)
        # Recent observations count more: weight halves every _HALF_LIFE observations back.
        recency = 0.5 ** (np.arange(len(y))[::-1] / self._HALF_LIFE)
        scale = math.exp(_median(np.log(y / prior_pred), recency))
        target = scale * prior
        ref = scale * prior_pred  # residuals are taken relative to the update's size
        a = x / ref[:, None]
        b = y / ref
        # Prior: each coefficient within a factor of about 2 of its scaled prior value
        # (relative standard deviation _PRIOR_SPREAD), and never tighter than 1 % of the
        # value that alone would explain a typical update, so that a prior of ~0 can grow.
        used = (x > 0).sum(axis=0)
        mean_feature = x.sum(axis=0) / np.maximum(used, 1)
        alone = np.where(used > 0, _median(y) / np.maximum(mean_feature, 1e-12), 0.0)
        spread = self._PRIOR_SPREAD * np.maximum(np.maximum(target, 0.01 * alone), 1e-9)
        precision = np.diag(1.0 / spread**2)
        weights = recency
        sigma = 0.1  # relative noise of one observation; re-estimated below
        theta = target
        for _ in range(3):
            # Bayesian ridge: noise variance over prior variance sets the pull to the prior.
            aw = a * weights[:, None]
            lhs = aw.T @ a + sigma**2 * precision
            theta = np.linalg.solve(lhs, aw.T @ b + sigma**2 * precision @ target)
            residual = b - a @ theta
            sigma = max(1.4826 * _median(np.abs(residual - _median(residual))), 0.01)
            # Only slow outliers are cut: interference (GC, preemption, page faults) adds
            # time and never removes it, so a run well under the fit is news about the
            # machine, not noise. Relative residuals below the fit are bounded by -1 anyway.
            tukey = np.clip(1 - (residual / (self._TUKEY * sigma)) ** 2, 0.0, None) ** 2
            weights = recency * np.where(residual > 0, tukey, 1.0)
        self._coefficients = tuple(float(v) for v in np.maximum(theta, 0.0))

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain floats, ints and lists (JSON-able): the configuration and the window."""
        return {"version": 1, "prior": self.prior.as_list(), "window": self.window,
                "default_margin": self.default_margin, "n_observed": self.n_observed,
                "observations": [list(o) for o in self._obs],
                # The fit in use and how many observations came after it: refitting on
                # load would plan differently from the run that saved it.
                "coefficients": list(self._coefficients), "unfitted": self._unfitted}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; CheckpointError if ``state`` is not one."""
        try:
            _check_state(state)
            restored = UpdateCostModel(UpdateCoefficients(*state["prior"]),
                                       window=state["window"],
                                       default_margin=state["default_margin"])
        except (UsageError, TypeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"update cost model state is invalid: {exc}") from None
        restored.n_observed = int(state["n_observed"])
        restored._obs = [[float(v) for v in o] for o in state["observations"]][-restored.window:]
        if restored._obs:
            restored._refit()
        if "coefficients" in state:  # absent from states saved before lazy refits
            restored._coefficients = tuple(float(v) for v in state["coefficients"])
            restored._unfitted = state["unfitted"]
        self.__dict__.update(restored.__dict__)


def _median(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """(Weighted) median of a 1-D array; np.median's generality costs 30 us a call, this 3."""
    if weights is None:
        ordered = np.sort(values)
        mid = len(ordered) // 2
        return float(ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2)
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def _quantile(ordered: np.ndarray, q: float) -> float:
    """The ``q`` quantile of sorted values, interpolated linearly (as np.quantile)."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (position - low) * (ordered[high] - ordered[low]))


def _feature_values(n_new: int, n_replay_per_step: int, n_steps: int,
                    n_new_per_step: int | None) -> tuple[int, int, int]:
    """The model's features: new samples, steps, samples over all steps."""
    if min(n_new, n_replay_per_step, n_steps) < 0:
        raise UsageError(f"update shape must be >= 0, got n_new={n_new}, "
                         f"n_replay_per_step={n_replay_per_step}, n_steps={n_steps}")
    per_step = n_new if n_new_per_step is None else n_new_per_step
    if per_step < 0:
        raise UsageError(f"n_new_per_step must be >= 0, got {n_new_per_step}")
    return n_new, n_steps, n_steps * (per_step + n_replay_per_step)


def _check_state(state: Any) -> None:
    """Raise ValueError naming the first entry of an UpdateCostModel state that is wrong."""
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a mapping, got {type(state).__name__}")
    if state.get("version") != 1:
        raise ValueError(f"unknown version {state.get('version')!r}")

    def number(value: Any) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))

    def numbers(value: Any, length: int | None = None) -> bool:
        return (isinstance(value, list) and all(number(v) for v in value)
                and (length is None or len(value) == length))

    checks = {
        "prior": numbers(state.get("prior"), 4),
        "window": isinstance(state.get("window"), int),
        "default_margin": number(state.get("default_margin")),
        "n_observed": isinstance(state.get("n_observed"), int) and state["n_observed"] >= 0,
        "observations": isinstance(state.get("observations"), list) and all(
            numbers(o, 4) and min(o) >= 0 and o[3] > 0 for o in state["observations"]),
    }
    if "coefficients" in state or "unfitted" in state:
        checks["coefficients"] = (numbers(state.get("coefficients"), 4)
                                  and min(state["coefficients"]) >= 0)
        checks["unfitted"] = (isinstance(state.get("unfitted"), int)
                              and not isinstance(state["unfitted"], bool)
                              and state["unfitted"] >= 0)
    wrong = [key for key, ok in checks.items() if not ok]
    if wrong:
        raise ValueError(f"{wrong[0]} is missing or malformed")
