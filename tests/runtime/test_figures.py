"""Where figures were measured, the device's roofline prediction, and the checks that warn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgecl import Learner, LearnerConfig
from edgecl.data.scenarios import Experience
from edgecl.profiles import load_profile
from edgecl.runtime.cost import Roofline
from edgecl.runtime.figures import (
    device_prediction,
    experience_warnings,
    is_other_device,
    learned_nothing_warning,
    ram_warning,
)

CONFIG = LearnerConfig(pretrain_epochs=1, epochs=1)


def _learner(strategy: str, profile: str = "cpu") -> Learner:
    rng = np.random.default_rng(0)
    learner = Learner(strategy=strategy, input_shape=(16,), n_classes=4, config=CONFIG,
                      roofline=Roofline.from_profile(load_profile(profile)))
    learner.learn_many(rng.normal(size=(40, 16)).astype(np.float32), np.arange(40) % 2)
    return learner


def _experience(index: int, classes: tuple[int, ...]) -> Experience:
    empty = np.zeros((0, 16), dtype=np.float32)
    none = np.zeros(0, dtype=np.int64)
    return Experience(index=index, x=empty, y=none, x_test=empty, y_test=none,
                      classes=classes, new_classes=classes)


def test_only_the_workstation_profile_is_this_machine():
    assert not is_other_device(load_profile("cpu"))
    assert all(is_other_device(load_profile(name)) for name in ("rpi-zero2", "rpi4", "jetson"))


def test_peak_rss_warns_when_it_leaves_a_small_board_no_room():
    zero2, cpu = load_profile("rpi-zero2"), load_profile("cpu")
    warning = ram_warning(450.0, zero2, when="by the end of experience 0")
    assert warning is not None
    for needle in ("450 MB", "512 MB of RAM", "rpi-zero2", "experience 0", "smaller backbone",
                   "torch-free device runtime"):
        assert needle in warning, needle
    assert ram_warning(480.0, cpu) is None  # 480 MB of 16 GB
    assert ram_warning(200.0, zero2) is None  # under half of 512 MB


def test_learned_nothing_is_below_chance_among_the_classes_seen():
    cwr = _learner("cwr*")
    experience = _experience(2, (3, 5))
    warning = learned_nothing_warning(cwr, experience, 0.109, n_seen=6)
    assert warning is not None
    assert "experience 2 (classes 3,5)" in warning and "0.109" in warning
    assert "only the output layer learns" in warning and "ar1*" in warning  # the CWR hint
    assert learned_nothing_warning(cwr, experience, 0.2, n_seen=6) is None  # above 1/6
    assert learned_nothing_warning(cwr, experience, float("nan"), n_seen=6) is None
    generic = learned_nothing_warning(_learner("naive"), experience, 0.0, n_seen=6)
    assert "--backbone-weights" in generic and "only the output layer" not in generic


def test_each_check_warns_once_per_run():
    learner = _learner("cwr*")
    zero2 = dataclasses.replace(load_profile("rpi-zero2"),
                                device=dataclasses.replace(load_profile("rpi-zero2").device,
                                                           ram_mb=1))  # any RSS is too much
    experiences = [_experience(0, (0, 1)), _experience(1, (2, 3))]
    first = experience_warnings(learner, zero2, experiences, 1, [1.0, 0.0], notes=[])
    assert len(first) == 2, first
    assert experience_warnings(learner, zero2, experiences, 1, [1.0, 0.0], notes=first) == []
    assert experience_warnings(learner, load_profile("cpu"), experiences, 1, [1.0, 0.9],
                               notes=[]) == []


@pytest.mark.parametrize("online_batch", [None, 8])
def test_device_prediction_prices_the_update_at_the_profiles_rates(online_batch):
    fast, slow = _learner("latent-replay", "cpu"), _learner("latent-replay", "rpi-zero2")
    on_cpu = device_prediction(fast, load_profile("cpu"), online_batch=online_batch)
    on_zero2 = device_prediction(slow, load_profile("rpi-zero2"), online_batch=online_batch)
    assert not on_cpu["other_device"] and on_zero2["other_device"]
    assert "roofline prediction for rpi-zero2" in on_zero2["what"]
    assert "not a measurement" in on_zero2["what"]
    # 115.2 against 9.6 GFLOP/s, 51.2 against 3.6 GB/s; the per-call overhead, the same on
    # both, takes much of this tiny head's update.
    assert on_zero2["update_ms"] > 1.5 * on_cpu["update_ms"] > 0
    assert on_zero2["update"]["replayed_per_step"] == 32
    assert on_zero2["update"]["backbone_and_store_included"] == (online_batch is not None)
    if online_batch is None:  # one step: the new mini-batch and the replayed latents
        assert on_zero2["update"]["new"] == CONFIG.batch_size
    assert device_prediction(Learner(strategy="naive", input_shape=(16,), n_classes=4),
                             load_profile("cpu"), online_batch=None) is None
