"""ONNX deployment: export parity, int8 quantization, and the ONNX Runtime runner's errors."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgecl.backbones import (
    BatchRenorm,
    create_backbone,
    replace_batchnorm_with_renorm,
    split_model,
)
from edgecl.backbones.onnx import (
    OrtRunner,
    check_parity,
    export_onnx,
    file_sha256,
    quantize_int8,
)
from edgecl.errors import DataError, EdgeclError, EdgeclWarning, UsageError

# (backbone, per-sample input shape, builder options). MobileNet runs at 32x32 and width 0.25
# to stay fast; the 3x128x128, width 1.0 network is covered by tools/bench_backbone.py.
BACKBONES = [
    ("mlp", (64,), {}),
    ("cnn", (1, 8, 8), {}),
    ("cnn", (1, 28, 28), {}),
    ("mobilenet", (3, 32, 32), {"width_mult": 0.25}),
]


def samples(shape: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def set_bn_stats_from_data(model: nn.Module, x: np.ndarray) -> None:
    """Running statistics of the data, as after training: each layer's output has unit scale.

    With the default statistics (mean 0, var 1) a deep random network's output shrinks to
    ~1e-16, and any export would pass a 1e-4 parity check.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calls below
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(x))
    for m in norms:
        m.momentum = 0.1


def trained_parts(name: str, shape: tuple[int, ...], options: dict) -> dict[str, tuple]:
    """{part: (module in training mode, its per-sample input shape, samples for it)}."""
    torch.manual_seed(0)
    backbone = create_backbone(name, input_shape=shape, n_classes=10, options=options)
    set_bn_stats_from_data(backbone.model, samples(shape, 64, seed=1))
    parts = split_model(backbone.model, backbone.latent_layer)
    x = samples(shape, 7)
    with torch.no_grad():
        latents = parts.frozen.eval()(torch.from_numpy(x)).numpy()
    backbone.model.train()
    parts.frozen.train()
    return {
        "full": (backbone.model, shape, x),
        "frozen": (parts.frozen, shape, x),
        "head": (parts.head, latents.shape[1:], latents),
    }


@pytest.mark.parametrize(("name", "shape", "options"), BACKBONES,
                         ids=[f"{n}-{'x'.join(map(str, s))}" for n, s, _ in BACKBONES])
def test_every_backbone_part_exports_with_parity_and_a_dynamic_batch(
        tmp_path: Path, name: str, shape: tuple[int, ...], options: dict) -> None:
    for part, (module, in_shape, x) in trained_parts(name, shape, options).items():
        before = {k: v.clone() for k, v in module.state_dict().items()}
        path = export_onnx(module, tmp_path / f"{part}.onnx", input_shape=in_shape)

        assert module.training, f"{part}: export changed the caller's module to eval mode"
        assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
        parity = check_parity(module, path, samples=x)
        assert parity.ok and parity.max_abs < 1e-4, f"{name} {part}: {parity}"
        assert module.training, f"{part}: check_parity changed the caller's module"

        runner = OrtRunner(path, input_shape=in_shape)
        with torch.no_grad():
            expected = module.eval()(torch.from_numpy(x)).numpy()
        module.train()
        assert expected.std() > 0.05, "outputs near zero would make the parity check vacuous"
        assert runner.input_shape == in_shape
        assert runner.output_shape == expected.shape[1:]
        one, seven = runner(x[:1]), runner(x)  # one file, two batch sizes
        np.testing.assert_allclose(one, expected[:1], atol=1e-4, rtol=0)
        np.testing.assert_allclose(seven, expected, atol=1e-4, rtol=0)


def test_graph_has_the_documented_names_and_folded_batchnorm(tmp_path: Path) -> None:
    module, shape, _ = trained_parts("cnn", (1, 8, 8), {})["full"]
    path = export_onnx(module, tmp_path / "cnn.onnx", input_shape=shape)
    graph = onnx.load(str(path)).graph

    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["output"]
    for value in (graph.input[0], graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    # BatchNorm after Conv and after Linear is folded into the layer's weights.
    assert "BatchNormalization" not in {node.op_type for node in graph.node}


@pytest.mark.parametrize(("name", "shape"), [("mlp", (64,)), ("cnn", (1, 8, 8))])
def test_batch_renorm_head_exports_like_batchnorm(tmp_path: Path, name: str,
                                                  shape: tuple[int, ...]) -> None:
    head, latent_shape, latents = trained_parts(name, shape, {})["head"]
    replace_batchnorm_with_renorm(head)
    assert any(isinstance(m, BatchRenorm) for m in head.modules())
    head.train()
    with torch.no_grad():  # training steps move the renorm statistics away from BN's
        head(torch.from_numpy(latents) * 2 + 0.5)
    path = export_onnx(head, tmp_path / "head.onnx", input_shape=latent_shape)

    assert head.training
    parity = check_parity(head, path, samples=latents)
    assert parity.ok, parity
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"BatchNormalization", "Sub", "Div"}, f"renorm not folded: {ops}"


def test_norms_that_cannot_be_folded_still_export_correctly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # BatchRenorm after a ReLU has no layer to fold into; BatchNorm1d after a Linear on
    # (N, C, L) input normalises C, not the Linear's features, so it must not be folded
    # even though the sizes agree (4 == 4).
    module = nn.Sequential(nn.ReLU(), BatchRenorm(4), nn.Linear(5, 4), nn.BatchNorm1d(4))
    x = samples((4, 5), 9)
    set_bn_stats_from_data(module, x)
    with torch.no_grad():
        module[1].running_mean.uniform_(0.0, 1.0)
        module[1].running_var.uniform_(0.5, 2.0)
    path = export_onnx(module, tmp_path / "m.onnx", input_shape=(4, 5))

    parity = check_parity(module, path, samples=x)
    assert parity.ok, parity
    assert parity.error < 1e-5


def _with_weight_scaled(path: Path, out: Path, factor: float) -> Path:
    """A copy of the ONNX file whose largest weight tensor is scaled by ``factor``."""
    model = onnx.load(str(path))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = onnx.numpy_helper.to_array(weight) * np.float32(factor)
    weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weight.name))
    onnx.save(model, str(out))
    return out


def test_parity_is_scale_free_for_outputs_of_1e_9(tmp_path: Path) -> None:
    """A random-weight MobileNet (default BatchNorm statistics) outputs ~1e-9. A correct
    export passes; one with a weight tensor 1% off fails, which the old absolute tolerance
    of 1e-4 x max(1, max |output|) let through."""
    torch.manual_seed(0)
    backbone = create_backbone("mobilenet", input_shape=(3, 32, 32), n_classes=10,
                               options={"width_mult": 0.25})
    frozen = split_model(backbone.model, backbone.latent_layer).frozen
    x = samples((3, 32, 32), 8)
    path = export_onnx(frozen, tmp_path / "tiny.onnx", input_shape=(3, 32, 32))

    good = check_parity(frozen, path, samples=x)
    assert 1e-12 < good.scale < 1e-6, good  # the outputs really are tiny
    assert good.ok and good.error < 1e-5, good

    broken = check_parity(frozen, _with_weight_scaled(path, tmp_path / "b.onnx", 1.01),
                          samples=x)
    assert not broken.ok, broken
    assert broken.error > 1e-3, broken  # 1% of the weights shows as ~1% of the outputs
    assert broken.max_abs <= 1e-4 * max(1.0, broken.scale)  # what the old check passed
    assert "FAILED" in broken.describe() and "limit 1.0e-04" in broken.describe()


def test_parity_holds_large_outputs_to_the_same_relative_limit(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Linear(8, 4))
    with torch.no_grad():
        module[0].weight.mul_(1e3)  # outputs in the hundreds
    x = samples((8,), 16)
    path = export_onnx(module, tmp_path / "big.onnx", input_shape=(8,))
    good = check_parity(module, path, samples=x)
    assert good.scale > 100 and good.ok, good
    broken = check_parity(module, _with_weight_scaled(path, tmp_path / "b.onnx", 1.01),
                          samples=x)
    assert not broken.ok and broken.error > 1e-3, broken


def test_export_leaves_a_good_file_in_place_when_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(nn.Linear(4, 2), path, input_shape=(4,))
    good = path.read_bytes()

    with pytest.raises(UsageError, match=r"does not accept inputs of shape \(5,\)"):
        export_onnx(nn.Linear(4, 2), path, input_shape=(5,))
    with pytest.raises(UsageError, match="opset must be an integer from 9 to"):
        export_onnx(nn.Linear(4, 2), path, input_shape=(4,), opset=99)
    with pytest.raises(UsageError, match="positive ints"):
        export_onnx(nn.Linear(4, 2), path, input_shape=(0,))
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "temporary file left behind"


# --- int8 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An mlp and a cnn trained briefly on scikit-learn's digits, exported to fp32 ONNX."""
    pytest.importorskip("sklearn")
    from edgecl.data import load_dataset

    data = load_dataset("digits", seed=0)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    directory = tmp_path_factory.mktemp("int8")
    models = {}
    for name in ("mlp", "cnn"):
        torch.manual_seed(0)
        model = create_backbone(name, input_shape=data.input_shape,
                                n_classes=data.n_classes).model
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(3):  # epochs
            for i in range(0, len(x), 64):
                loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        path = export_onnx(model, directory / f"{name}.onnx", input_shape=data.input_shape)
        models[name] = (model, path)
    return {"data": data, "models": models, "dir": directory}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_int8_predictions_agree_with_fp32(digits_models: dict, name: str) -> None:
    data = digits_models["data"]
    model, fp32_path = digits_models["models"][name]
    int8_path = digits_models["dir"] / f"{name}-int8.onnx"

    quantize_int8(fp32_path, int8_path, calibration=data.x_train[:256])

    fp32 = OrtRunner(fp32_path)(data.x_test).argmax(1)
    int8 = OrtRunner(int8_path)(data.x_test).argmax(1)
    assert (fp32 == data.y_test).mean() > 0.8, "the model did not train; the test means nothing"
    assert (int8 == fp32).mean() >= 0.95
    assert int8_path.stat().st_size < 0.5 * fp32_path.stat().st_size  # int8 weights
    ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    assert "QuantizeLinear" in ops


def test_int8_calibration_errors(digits_models: dict) -> None:
    _, fp32_path = digits_models["models"]["mlp"]
    out = digits_models["dir"] / "bad-int8.onnx"
    x = digits_models["data"].x_train[:32]

    with pytest.raises(UsageError, match="calibration data is empty"):
        quantize_int8(fp32_path, out, calibration=x[:0])
    nan = x.copy()
    nan[3, 0, 2, 2] = np.nan
    with pytest.raises(UsageError, match="calibration data has 1 NaN or infinite values"):
        quantize_int8(fp32_path, out, calibration=nan)
    with pytest.raises(UsageError, match="calibration data must be floating point"):
        quantize_int8(fp32_path, out, calibration=(x * 16).astype(np.int64))
    with pytest.raises(UsageError, match=r"model expects \(1, 8, 8\) per sample, the data has "
                                         r"\(64,\)"):
        quantize_int8(fp32_path, out, calibration=x.reshape(32, 64))
    assert not out.exists()


# --- OrtRunner ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_backbone("mlp", input_shape=(64,), n_classes=10).model
    return export_onnx(model, tmp_path_factory.mktemp("mlp") / "mlp.onnx", input_shape=(64,))


def test_unavailable_providers_fall_back_to_cpu_with_one_warning(mlp_file: Path) -> None:
    wanted = ["TensorrtExecutionProvider", "NoSuchExecutionProvider", "CPUExecutionProvider"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = OrtRunner(mlp_file, providers=wanted)

    ours = [w for w in caught if issubclass(w.category, EdgeclWarning)]
    assert len(ours) == 1
    message = str(ours[0].message)
    assert "TensorrtExecutionProvider" in message and "NoSuchExecutionProvider" in message
    assert "running mlp.onnx on CPUExecutionProvider" in message
    assert runner.provider == "CPUExecutionProvider"
    assert runner(samples((64,), 2)).shape == (2, 10)


def test_default_provider_is_cpu_without_warning(mlp_file: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdgeclWarning)
        runner = OrtRunner(mlp_file, threads=1)
    assert runner.provider == "CPUExecutionProvider"


def test_run_torch_matches_the_numpy_call(mlp_file: Path) -> None:
    runner = OrtRunner(mlp_file)
    x = torch.from_numpy(samples((64,), 3)).double().requires_grad_()
    out = runner.run_torch(x)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    np.testing.assert_array_equal(out.numpy(), runner(x.detach().numpy()))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"ONNX model file not found: .*nothing\.onnx"):
        OrtRunner(tmp_path / "nothing.onnx")
    with pytest.raises(UsageError, match=r"cannot read .*nothing\.onnx"):
        file_sha256(tmp_path / "nothing.onnx")


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_damaged_files_are_refused_before_onnx_runtime_loads_them(
        tmp_path: Path, mlp_file: Path, damage: str) -> None:
    data = mlp_file.read_bytes()
    blob = {"truncated": data[: len(data) // 2],
            "random bytes": np.random.default_rng(0).bytes(4096),
            "empty": b""}[damage]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(blob)
    with pytest.raises(UsageError, match=r"bad\.onnx is not a valid ONNX model .*export it "
                                         "again"):
        OrtRunner(bad)


def test_bit_flips_in_the_graph_are_refused(tmp_path: Path, mlp_file: Path) -> None:
    data = mlp_file.read_bytes()
    bad = tmp_path / "bad.onnx"

    op = bytearray(data)
    op[data.index(b"Gemm") + 1] ^= 0x08  # "Gemm" -> "Gmm"-like: no such operator
    bad.write_bytes(bytes(op))
    with pytest.raises(UsageError, match=r"bad\.onnx is not a valid ONNX model"):
        OrtRunner(bad)

    label = bytearray(data)
    label[data.rindex(b"batch")] = 0x9C  # the batch dimension's name, no longer UTF-8
    bad.write_bytes(bytes(label))
    with pytest.raises(UsageError, match=r"bad\.onnx is not a valid ONNX model"):
        OrtRunner(bad)


def test_a_bit_flip_inside_the_weights_is_caught_by_the_hash(tmp_path: Path,
                                                             mlp_file: Path) -> None:
    # The file stays a valid model with one slightly different weight: no loader can tell,
    # which is why checkpoints record the file's sha256.
    data = mlp_file.read_bytes()
    weights = max(onnx.load(str(mlp_file)).graph.initializer, key=lambda t: len(t.raw_data))
    middle = data.index(weights.raw_data) + len(weights.raw_data) // 2
    flipped = bytearray(data)
    flipped[middle - middle % 4] ^= 0x01  # lowest mantissa bit of one float32 (little-endian)
    bad = tmp_path / "flipped.onnx"
    bad.write_bytes(bytes(flipped))

    x = samples((64,), 16)
    np.testing.assert_allclose(OrtRunner(bad)(x), OrtRunner(mlp_file)(x), atol=1e-5)
    assert file_sha256(mlp_file) == hashlib.sha256(data).hexdigest()
    assert file_sha256(bad) != file_sha256(mlp_file)


def test_nan_outputs_from_a_broken_model_are_an_error(tmp_path: Path) -> None:
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight[0, 0] = float("inf")  # what a flipped exponent bit can do
    path = export_onnx(layer, tmp_path / "inf.onnx", input_shape=(3,))
    with pytest.raises(EdgeclError, match=r"inf\.onnx produced NaN or infinite outputs.*sha256"):
        OrtRunner(path)(np.array([[0.0, 1.0, 2.0]], dtype=np.float32))


def test_model_for_other_data_is_refused_at_construction(tmp_path: Path) -> None:
    model = create_backbone("cnn", input_shape=(1, 8, 8), n_classes=10).model
    path = export_onnx(model, tmp_path / "cnn.onnx", input_shape=(1, 8, 8))
    with pytest.raises(UsageError, match=r"cnn\.onnx: model expects \(1, 8, 8\) per sample, "
                                         r"the data has \(64,\)"):
        OrtRunner(path, input_shape=(64,))


def test_models_with_two_inputs_are_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["output"])], "two_inputs",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in "ab"],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(UsageError, match=r"two\.onnx has 2 inputs \(a, b\)"):
        OrtRunner(path)


def test_bad_arrays_raise_data_errors(mlp_file: Path) -> None:
    runner = OrtRunner(mlp_file)
    x = samples((64,), 4)

    with pytest.raises(DataError, match=r"expects \(64,\) per sample, got an array of shape "
                                        r"\(4, 1, 8, 8\) \(\(1, 8, 8\) per sample\)"):
        runner(x.reshape(4, 1, 8, 8))
    with pytest.raises(DataError, match="needs a batch dimension"):
        runner(x[0])
    with pytest.raises(DataError, match="must be floating point, got dtype int64"):
        runner(x.astype(np.int64))
    x[2, 5] = np.inf
    with pytest.raises(DataError, match="has 1 NaN or infinite values"):
        runner(x)
    with pytest.raises(DataError, match="must be a numpy array, got list"):
        runner([[0.0] * 64])
    with pytest.raises(DataError, match="floating point"):
        runner.run_torch(torch.zeros(2, 64, dtype=torch.long))
