"""Storage codecs: faithful round trips, exact byte accounting, budget-sized codebooks."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecl.errors import BudgetError, CheckpointError, DataError, UsageError
from edgecl.memory import ClassBalancedBuffer
from edgecl.memory.codecs import (
    CODECS,
    Codec,
    CodecWarning,
    ProductQuantizationCodec,
    create_codec,
    list_codecs,
)

# 40 values: not a multiple of pq's sub_dim (16), so the zero padding is exercised too.
DIM = 40
NEEDS_FIT = ["opq", "pq", "uint8"]


def low_rank(n: int, dim: int = 64, *, rank: int = 6, seed: int = 0) -> torch.Tensor:
    """ReLU of a few strong directions mixed into every value: correlated sub-spaces."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=g) * torch.linspace(3, 1, rank)
    mixed = z @ torch.randn(rank, dim, generator=g)
    return torch.relu(mixed + 0.05 * torch.randn(n, dim, generator=g))


def clustered(n: int, dim: int = DIM, *, clusters: int = 8, seed: int = 0) -> torch.Tensor:
    """Tight clusters around spread-out centres: what k-means should compress well."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(clusters, dim, generator=g)
    which = torch.randint(clusters, (n,), generator=g)
    return centres[which] + 0.1 * torch.randn(n, dim, generator=g)


def fitted(name: str, data: torch.Tensor, **options: object) -> Codec:
    codec = CODECS.create(name, **options)
    codec.configure(data.shape[1], max_bytes=None)
    codec.fit(data)
    return codec


def relative_mse(codec: Codec, x: torch.Tensor) -> float:
    return float(((codec.decode(codec.encode(x)) - x) ** 2).mean() / x.var())


@pytest.mark.parametrize("name", list_codecs())
def test_round_trip_keeps_shapes_dtypes_and_byte_counts(name: str) -> None:
    x = clustered(600)
    codec = fitted(name, x)
    assert codec.name == name and codec.is_fitted
    codes = codec.encode(x)
    assert codes.dtype == codec.storage_dtype
    assert codes.shape == (600, codec.code_width(DIM))
    # What bytes_per_sample promises is what a stored row really takes.
    assert codes.nbytes == 600 * codec.bytes_per_sample(DIM)
    out = codec.decode(codes)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert relative_mse(codec, x) < 0.05  # every codec keeps clustered data well
    # overhead_bytes counts exactly the fitted parameters.
    params = {k: v for k, v in codec.state_dict().items() if k != "dim"}
    assert codec.overhead_bytes() == sum(t.nbytes for t in params.values())


@pytest.mark.parametrize("name", list_codecs())
def test_overhead_is_reserved_at_configure_before_fitting(name: str) -> None:
    # A buffer sizes its storage right after configure, maybe before any fit.
    codec = create_codec(name)
    codec.configure(DIM, max_bytes=None)
    reserved = codec.overhead_bytes()
    codec.fit(clustered(600))
    assert codec.overhead_bytes() == reserved


def test_fp32_is_exact_and_fp16_within_its_precision() -> None:
    x = clustered(300)
    assert torch.equal(fitted("fp32", x).decode(fitted("fp32", x).encode(x)), x)
    half = fitted("fp16", x)
    error = (half.decode(half.encode(x)) - x).abs()
    assert bool((error <= 1e-3 * x.abs()).all())
    assert half.bytes_per_sample(DIM) == 2 * DIM


def test_fp16_rejects_values_beyond_its_range() -> None:
    x = clustered(4)
    x[1, 3] = 1e6
    with pytest.raises(DataError, match="float16"):
        create_codec("fp16").encode(x)


def test_uint8_error_is_at_most_half_a_step_per_channel() -> None:
    x = clustered(500)
    codec = fitted("uint8", x)
    scale = codec.state_dict()["scale"]
    error = (codec.decode(codec.encode(x)) - x).abs()
    assert bool((error <= scale / 2 * 1.001 + 1e-6).all())
    assert codec.overhead_bytes() == 8 * DIM


def test_uint8_values_on_its_grid_round_trip_exactly() -> None:
    codec = fitted("uint8", clustered(200))
    codes = torch.randint(0, 256, (300, DIM), dtype=torch.uint8)
    grid = codec.decode(codes)
    assert torch.equal(codec.encode(grid), codes)
    assert torch.equal(codec.decode(codec.encode(grid)), grid)


def test_uint8_handles_constant_channels_and_keeps_relu_zeros_exact() -> None:
    x = torch.relu(clustered(200))
    x[:, 0] = 0.0  # a unit never active in the fit data
    x[:, 1] = 2.5  # a constant non-zero channel
    codec = fitted("uint8", x)
    state = codec.state_dict()
    assert bool(torch.isfinite(state["scale"]).all() & (state["scale"] > 0).all())
    out = codec.decode(codec.encode(x))
    assert bool(torch.isfinite(out).all())
    assert torch.equal(out[x == 0], x[x == 0])  # zeros decode to exactly zero
    assert bool(((out[:, 1] - 2.5).abs() <= state["scale"][1] / 2 * 1.001).all())
    later = torch.zeros(1, DIM)
    later[0, 0] = 1.0  # the dead unit wakes up later: still stored, not clamped to zero
    assert abs(float(codec.decode(codec.encode(later))[0, 0]) - 1.0) < 0.05


def test_pq_error_falls_as_sub_vectors_get_shorter() -> None:
    x = clustered(800, 64, clusters=64)
    errors = [relative_mse(fitted("pq", x, sub_dim=s, max_centroids=16), x) for s in (32, 16, 8)]
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("dim", [256, 512])
def test_pq_is_at_least_32_times_smaller_than_fp32(dim: int) -> None:
    pq, fp32 = create_codec("pq"), create_codec("fp32")
    assert pq.bytes_per_sample(dim) == dim // 16
    assert fp32.bytes_per_sample(dim) >= 32 * pq.bytes_per_sample(dim)


@pytest.mark.parametrize(("dim", "max_bytes", "k"), [
    (1024, 104_857, 8),  # 0.1 MiB: 8 x 1024 x 4 = 32 KiB of codebooks <= 51 KiB
    (512, None, 256),
    (512, 1 << 20, 256),  # 256 centroids x 512 x 4 bytes is exactly half
    (512, (1 << 20) - 1, 128),
    (40, 2 * 2 * 48 * 4, 2),  # 40 values pad to 48
])
def test_pq_sizes_its_codebooks_to_half_the_budget(dim: int, max_bytes: int | None,
                                                   k: int) -> None:
    codec = create_codec("pq")
    codec.configure(dim, max_bytes=max_bytes)
    assert codec.n_centroids == k
    padded = -(-dim // 16) * 16
    assert codec.overhead_bytes() == 4 * k * padded  # reserved before fitting
    codec.fit(clustered(600, dim))
    assert codec.overhead_bytes() == 4 * k * padded


def test_opq_counts_its_rotation_in_the_budget() -> None:
    rotation = 64 * 64 * 4
    codec = create_codec("opq")
    codec.configure(64, max_bytes=2 * (rotation + 16 * 64 * 4))
    assert codec.n_centroids == 16
    assert codec.overhead_bytes() == rotation + 16 * 64 * 4
    codec.fit(low_rank(300))
    state = codec.state_dict()
    assert codec.overhead_bytes() == state["rotation"].nbytes + state["codebooks"].nbytes
    with pytest.raises(BudgetError, match="64 x 64 float32 rotation"):
        create_codec("opq").configure(64, max_bytes=2 * (rotation + 2 * 64 * 4) - 1)


def test_pq_budget_error_says_what_the_smallest_codebook_needs() -> None:
    with pytest.raises(BudgetError, match="need 384 bytes"):
        create_codec("pq").configure(40, max_bytes=2 * 384 - 1)
    assert ProductQuantizationCodec(max_centroids=64).centroids_for_budget(512, None) == 64


def test_pq_buffer_holds_forty_times_more_latents_than_fp32_in_a_tenth_of_a_megabyte() -> None:
    budget = 104_857
    sizes = {}
    for name in ("fp32", "pq"):
        buffer = ClassBalancedBuffer(max_bytes=budget, codec=create_codec(name))
        buffer.reserve(1024)
        sizes[name] = buffer.capacity
        assert buffer.nbytes <= budget
    assert sizes["fp32"] == 25 and sizes["pq"] >= 40 * sizes["fp32"]


@pytest.mark.parametrize("name", list_codecs())
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_fit_data_is_a_data_error(name: str, bad: float) -> None:
    x = clustered(50)
    x[[3, 7, 9], 2] = bad
    with pytest.raises(DataError, match=f"codec {name}: fit data has 3 NaN/inf values"):
        create_codec(name).fit(x)


@pytest.mark.parametrize("name", list_codecs())
def test_empty_fit_data_and_nan_encodes_are_data_errors(name: str) -> None:
    with pytest.raises(DataError, match="0 latents"):
        create_codec(name).fit(torch.empty(0, DIM))
    codec = fitted(name, clustered(300))
    x = clustered(5)
    x[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN/inf"):
        codec.encode(x)


@pytest.mark.parametrize("name", NEEDS_FIT)
def test_encoding_before_fitting_is_a_usage_error(name: str) -> None:
    codec = create_codec(name)
    assert not codec.is_fitted
    with pytest.raises(UsageError, match="not fitted"):
        codec.encode(clustered(3))


def test_pq_with_fewer_distinct_latents_than_centroids_warns_and_uses_fewer() -> None:
    with pytest.warns(CodecWarning, match="20 distinct latents .* using 16 centroids"):
        codec = fitted("pq", clustered(20))
    assert codec.n_centroids == 16
    repeated = clustered(5, clusters=5).repeat(10, 1)  # 50 rows, 5 distinct
    with pytest.warns(CodecWarning, match="5 distinct latents \\(of 50\\)"):
        codec = fitted("pq", repeated)
    assert codec.n_centroids == 4
    assert relative_mse(codec, repeated) < 0.5


def test_pq_needs_two_distinct_latents() -> None:
    with pytest.raises(DataError, match="at least 2"):
        create_codec("pq").fit(clustered(1))
    with pytest.raises(DataError, match="1 distinct latent"):
        fitted("pq", clustered(1).repeat(4, 1))


@pytest.mark.parametrize("name", list_codecs())
def test_state_dict_round_trip_decodes_identically(name: str) -> None:
    x = clustered(400)
    codec = fitted(name, x)
    codes = codec.encode(x)
    state = codec.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    restored = create_codec(name)
    restored.load_state_dict(state)
    assert restored.is_fitted
    assert torch.equal(restored.decode(codes), codec.decode(codes))
    assert torch.equal(restored.encode(x), codes)


@pytest.mark.parametrize("name", NEEDS_FIT)
def test_a_malformed_state_is_a_checkpoint_error(name: str) -> None:
    with pytest.raises(CheckpointError):
        create_codec(name).load_state_dict({"scale": torch.ones(3), "codebooks": torch.ones(2)})


def test_pq_loaded_codebooks_larger_than_the_budget_allows_are_refused() -> None:
    codec = fitted("pq", clustered(600, 512))
    restored = create_codec("pq")
    restored.load_state_dict(codec.state_dict())
    with pytest.raises(BudgetError, match="256 centroids"):
        restored.configure(512, max_bytes=600_000)


def test_opq_rotation_cuts_the_error_of_pq_on_correlated_latents() -> None:
    x = low_rank(1500)
    fit, test = x[:1000], x[1000:]
    pq = fitted("pq", fit, sub_dim=8, max_centroids=16)
    opq = fitted("opq", fit, sub_dim=8, max_centroids=16)
    assert pq.bytes_per_sample(64) == opq.bytes_per_sample(64) == 8
    assert relative_mse(opq, test) < 0.7 * relative_mse(pq, test)  # measured: 0.09 vs 0.27
    rotation = opq.state_dict()["rotation"]
    assert torch.allclose(rotation @ rotation.T, torch.eye(64), atol=1e-4)


@pytest.mark.parametrize("name", ["opq", "pq"])
def test_pq_is_deterministic_under_its_seed(name: str) -> None:
    x = clustered(500, 64, clusters=32)

    def books(seed: int) -> torch.Tensor:
        return fitted(name, x, seed=seed).state_dict()["codebooks"]

    assert torch.equal(books(3), books(3))
    assert not torch.equal(books(3), books(4))


@pytest.mark.parametrize(("name", "max_bytes"), [("pq", 20_000), ("opq", 60_000)])
def test_pq_fitted_before_configure_learns_the_budget_sized_codebooks(name: str,
                                                                      max_bytes: int) -> None:
    # The buffer fits on the first batch, then configures for its budget.
    x = clustered(300, 64)
    late = create_codec(name)
    late.fit(x)
    late.configure(64, max_bytes=max_bytes)
    early = create_codec(name)
    early.configure(64, max_bytes=max_bytes)
    early.fit(x)
    assert late.n_centroids == early.n_centroids == 32  # 32 x 64 x 4 = 8 KiB (+ 16 KiB opq)
    assert torch.equal(late.state_dict()["codebooks"], early.state_dict()["codebooks"])


# Below these budgets nothing fits 24-value latents: pq's smallest codebooks (2 x 32 float32)
# and opq's 24 x 24 rotation must take at most half of the budget.
SMALLEST_BUDGET = {"pq": 2 * 256, "opq": 2 * (2304 + 256)}


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(list_codecs()), extra=st.integers(600, 12_000),
       labels=st.lists(st.integers(0, 4), min_size=2, max_size=90), batch=st.integers(2, 16),
       seed=st.integers(0, 1000))
def test_a_buffer_with_any_codec_stays_within_its_byte_budget(
        name: str, extra: int, labels: list[int], batch: int, seed: int) -> None:
    dim = 24
    budget = SMALLEST_BUDGET.get(name, 0) + extra
    buffer = ClassBalancedBuffer(max_bytes=budget, codec=create_codec(name), seed=seed)
    x = torch.relu(clustered(len(labels), dim, seed=seed))
    y = torch.tensor(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CodecWarning)  # first batches smaller than K
        for start in range(0, len(labels), batch):
            buffer.add(x[start:start + batch], y[start:start + batch])
            assert buffer.nbytes <= budget
    stored, stored_labels = buffer.all()
    assert stored.shape == (len(buffer), dim) and len(buffer) > 0
    assert bool(torch.isfinite(stored).all())
