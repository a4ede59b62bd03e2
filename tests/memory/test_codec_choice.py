"""The default codec from a profile: the one that fits the replay budget best."""

from __future__ import annotations

import pytest

from edgecl import Learner, LearnerConfig
from edgecl.memory import create_buffer, create_codec
from edgecl.memory.codec_choice import choose_codec, codec_candidates

MIB = 2**20


def test_candidates_are_the_profiles_codec_and_every_less_lossy_one():
    assert codec_candidates("fp32") == ("fp32",)
    assert codec_candidates("fp16") == ("fp32", "fp16")
    assert codec_candidates("uint8") == ("fp32", "fp16", "uint8")
    assert codec_candidates("pq") == ("fp32", "fp16", "uint8", "pq")


@pytest.mark.parametrize("kind", ["class-balanced", "exstream"])
@pytest.mark.parametrize("codec", ["fp32", "fp16", "uint8", "pq", "opq"])
def test_planned_size_is_what_the_buffer_then_allocates(kind, codec):
    def buffer():
        return create_buffer(kind, max_samples=300, max_bytes=MIB, codec=create_codec(codec))

    planned = buffer().planned_size(256)
    allocated = buffer()
    allocated.reserve(256)
    assert planned == (allocated.capacity, allocated.nbytes)


def test_rpi_zero2_defaults_choose_uint8_over_pq_whose_codebooks_cost_more():
    """rpi-zero2: 4 MB of replay, 200 latents, digits' 1024-value latents."""
    choice = choose_codec(codec_candidates("pq"), buffer_kind="class-balanced", dim=1024,
                          max_samples=200, max_bytes=4 * MIB)
    assert choice.codec == "uint8"
    pq, uint8 = choice.fit_of("pq"), choice.fit_of("uint8")
    assert pq.latents == uint8.latents == 200
    assert pq.bytes > 4 * uint8.bytes and pq.overhead_bytes == MIB  # 256 x 1024 x float32
    note = choice.note()
    assert "uint8 instead of the profile's pq" in note and f"{pq.bytes:,}" in note


@pytest.mark.parametrize(("samples", "megabytes"), [(None, 4), (200, 0.1)])
def test_pq_is_chosen_where_it_stores_more_latents_than_uint8(samples, megabytes):
    choice = choose_codec(codec_candidates("pq"), buffer_kind="class-balanced", dim=1024,
                          max_samples=samples, max_bytes=int(megabytes * MIB))
    assert choice.codec == "pq" and choice.note() is None
    assert choice.fit_of("pq").latents > choice.fit_of("uint8").latents


def test_the_fewest_bytes_then_the_least_lossy_win_among_equal_latents():
    # Every fine codec holds all 50 latents; uint8 allocates fewest bytes.
    assert choose_codec(codec_candidates("uint8"), buffer_kind="class-balanced", dim=64,
                        max_samples=50, max_bytes=MIB).codec == "uint8"
    # A profile's fp32 has no other candidate.
    assert choose_codec(("fp32",), buffer_kind="class-balanced", dim=64, max_samples=50,
                        max_bytes=MIB).codec == "fp32"


def test_nothing_fits_leaves_the_profiles_codec_to_report_the_budget_error():
    choice = choose_codec(codec_candidates("pq"), buffer_kind="class-balanced", dim=1024,
                          max_samples=200, max_bytes=100)
    assert choice.codec == "pq" and all(f.latents == 0 for f in choice.fits)


def test_learner_writes_the_choice_into_its_config_so_checkpoints_rebuild_it(tmp_path):
    import numpy as np

    config = LearnerConfig(pretrain_epochs=1, epochs=1, replay_bytes=4 * MIB)
    learner = Learner(strategy="latent-replay", input_shape=(16,), n_classes=4, config=config,
                      codec_candidates=codec_candidates("pq"))
    assert learner.codec_name == learner.config.codec == "uint8"
    assert learner.buffer.codec.name == "uint8"
    rng = np.random.default_rng(0)
    learner.learn_many(rng.normal(size=(40, 16)).astype(np.float32), np.arange(40) % 2)
    learner.save_checkpoint(tmp_path)
    assert Learner.from_checkpoint(tmp_path).buffer.codec.name == "uint8"
    # A codec named by the config or the strategy is never second-guessed.
    forced = Learner(strategy="latent-replay", input_shape=(16,), n_classes=4,
                     config=LearnerConfig(codec="pq", replay_bytes=4 * MIB),
                     codec_candidates=codec_candidates("pq"))
    remind = Learner(strategy="remind", input_shape=(16,), n_classes=4, config=config,
                     codec_candidates=codec_candidates("fp32"))
    assert forced.codec_name == remind.codec_name == "pq"
    assert forced.codec_choice is None and remind.codec_choice is None
