"""Learner behaviours outside the strategy contract: pretrained backbones from a file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecl import Learner, LearnerConfig, UsageError

CONFIG = LearnerConfig(pretrain_epochs=2, epochs=1)


def _data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (np.eye(3, 12)[y] * 3 + rng.normal(size=(n, 12))).astype(np.float32)
    return x, y


def _learner(config: LearnerConfig = CONFIG) -> Learner:
    return Learner(strategy="latent-replay", input_shape=(12,), n_classes=3, config=config,
                   seed=0)


def test_saved_backbone_loads_frozen_and_skips_pretraining(tmp_path):
    x, y = _data()
    first = _learner()
    first.learn_many(x, y)
    first.save_backbone(tmp_path / "bb.pt")

    second = Learner(strategy="naive", input_shape=(12,), n_classes=3, config=CONFIG, seed=7)
    second.load_backbone(tmp_path / "bb.pt")
    assert second.is_pretrained
    # The frozen part is the saved one, bit for bit, and stays so while the head learns.
    frozen_before = {k: v.clone() for k, v in second.frozen.state_dict().items()}
    for k, v in first.frozen.state_dict().items():
        assert torch.equal(frozen_before[k], v)
    second.learn_one(x[0], int(y[0]))
    for k, v in second.frozen.state_dict().items():
        assert torch.equal(frozen_before[k], v)


def test_backbone_weights_of_another_architecture_are_refused(tmp_path):
    other = Learner(strategy="naive", input_shape=(20,), n_classes=3, config=CONFIG, seed=0)
    other.learn_many(np.zeros((8, 20), np.float32), np.arange(8) % 3)
    other.save_backbone(tmp_path / "other.pt")
    learner = _learner()
    with pytest.raises(UsageError, match="do not fit"):
        learner.load_backbone(tmp_path / "other.pt")
    assert not learner.is_pretrained


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04truncated"])
def test_corrupt_backbone_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="not a readable weights file"):
        _learner().load_backbone(path)


def test_missing_backbone_file(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        _learner().load_backbone(tmp_path / "nope.pt")


def test_coarse_codecs_train_and_test_the_head_on_reconstructed_latents():
    x, y = _data(200)
    fine = _learner(config=LearnerConfig(pretrain_epochs=2, epochs=1, codec="uint8"))
    coarse = _learner(config=LearnerConfig(pretrain_epochs=2, epochs=1, codec="pq"))
    forced_off = _learner(config=LearnerConfig(pretrain_epochs=2, epochs=1, codec="pq",
                                               quantize_eval=False))
    for learner in (fine, coarse, forced_off):
        learner.learn_many(x, y)
    assert coarse.quantizes_eval and not fine.quantizes_eval and not forced_off.quantizes_eval
    # Quantized evaluation scores the reconstruction: the same as scoring it directly.
    latents = coarse._latents(torch.as_tensor(x))
    codec = coarse.buffer.codec
    rebuilt = codec.decode(codec.encode(latents)).view_as(latents)
    with torch.no_grad():
        direct = coarse.head(rebuilt).argmax(1).numpy()
    assert np.array_equal(coarse.predict_many(x), direct)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_a_clear_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no CUDA device"):
        Learner(strategy="naive", input_shape=(12,), n_classes=3, device="cuda")
    x, y = _data()
    learner = _learner()
    learner.learn_many(x, y)
    learner.save_checkpoint(tmp_path)
    with pytest.raises(UsageError, match="no CUDA device"):
        Learner.from_checkpoint(tmp_path, device="cuda")
    with pytest.raises(UsageError, match="unknown device"):
        Learner.from_checkpoint(tmp_path, device="tpu")
    assert Learner.from_checkpoint(tmp_path, device="cpu").evaluate(x, y) == learner.evaluate(x, y)
