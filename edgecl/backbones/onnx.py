"""ONNX deployment of a backbone: export, parity check, int8 quantization, ONNX Runtime runner.

The frozen part of a backbone (and the head, or the whole network) is exported with the
TorchScript exporter in eval mode, so BatchNorm after a convolution is folded into its
weights and constants are folded. :class:`OrtRunner` runs such a file in ONNX Runtime with
the execution providers a device profile asks for, falling back to the CPU.

Every file is written atomically (``edgecl._files.atomic_path``: a temporary file in the
target folder, fsynced, then ``os.replace``), so a crash never leaves a half-written model
where a good one was.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from edgecl._files import atomic_path as _atomic_path
from edgecl.backbones.batch_renorm import BatchRenorm
from edgecl.errors import DataError, EdgeclError, EdgeclWarning, UsageError

INPUT_NAME = "input"
OUTPUT_NAME = "output"
CPU_PROVIDER = "CPUExecutionProvider"

# The newest opset the TorchScript exporter writes (20 in torch 2.2 to 2.13); a private
# constant, hence the fallback.
_MAX_OPSET = getattr(getattr(torch.onnx, "_constants", None),
                     "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)

# Samples per ONNX Runtime call in check_parity and per calibration batch: bounds memory
# for large sample arrays without making small ones slower.
_CHUNK = 64


def _shape_str(shape: Sequence[int | None]) -> str:
    """(1, 8, 8) as the user would write it; unknown dims as '?'; (64,) keeps its comma."""
    parts = ["?" if d is None else str(d) for d in shape]
    return f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
        raise UsageError(f"input_shape must be a non-empty tuple of positive ints (one sample, "
                         f"no batch dimension), got {input_shape!r}")
    return tuple(int(d) for d in shape)


def _eval_copy(module: nn.Module) -> nn.Module:
    """A CPU copy in eval mode: the caller's module keeps its mode, device and weights."""
    return copy.deepcopy(module).cpu().eval()


_NORMS = (nn.modules.batchnorm._BatchNorm, BatchRenorm)


def _fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Fold eval-mode BatchNorm/BatchRenorm into the Conv or Linear just before it, in place.

    The TorchScript exporter folds BatchNorm after a convolution itself, but not after a
    Linear layer, which ONNX Runtime then runs as a separate BatchNormalization node (and
    int8 quantization leaves in float between two quantized layers). BatchRenorm is folded
    too: in eval mode it is the same affine map. Linear + BatchNorm is folded only where the
    Linear output is (N, features): on (N, C, L) the norm acts on C, not on the features.
    Runs ``example`` through the model (CPU, no grad) to learn the Linear output ranks.
    """
    ranks: dict[int, int] = {}
    hooks = [m.register_forward_hook(lambda m, _, out: ranks.__setitem__(id(m), out.dim()))
             for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    for parent in list(model.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (name, layer), (norm_name, norm) in itertools.pairwise(children):
            foldable = (
                isinstance(norm, _NORMS) and norm.running_mean is not None
                and isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
                and layer.weight.shape[0] == norm.num_features
                and (not isinstance(layer, nn.Linear) or ranks.get(id(layer)) == 2)
            )
            if not foldable:
                continue
            fused = copy.deepcopy(layer)
            # A (out, in) Linear weight broadcasts like a conv's (out, in, *kernel) one.
            fused.weight, fused.bias = fuse_conv_bn_weights(
                layer.weight, layer.bias, norm.running_mean, norm.running_var, norm.eps,
                norm.weight, norm.bias)
            setattr(parent, name, fused)
            setattr(parent, norm_name, nn.Identity())
    return model


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def export_onnx(module: nn.Module, path: str | os.PathLike, *, input_shape: tuple[int, ...],
                opset: int = 17, metadata: Mapping[str, str] | None = None) -> Path:
    """Export ``module`` to ONNX at ``path``; return the path.

    ``input_shape`` is one sample's shape (no batch dimension); the batch dimension is
    dynamic (named ``batch``). The graph has one input ``input`` and one output ``output``.
    An eval-mode copy is exported, so BatchNorm and BatchRenorm use their running statistics
    and are folded into the Conv or Linear layer before them (see :func:`_fold_batchnorm`);
    the caller's module keeps its mode and weights. ``metadata`` goes into the model's
    ``metadata_props`` (e.g. ``edgecl.labels``, the label of each output column).
    """
    path = Path(path)
    shape = _check_input_shape(input_shape)
    if isinstance(opset, bool) or not isinstance(opset, int) or not 9 <= opset <= _MAX_OPSET:
        raise UsageError(f"ONNX opset must be an integer from 9 to {_MAX_OPSET} (the "
                         f"TorchScript exporter's range with constant folding), got {opset!r}")
    model = _eval_copy(module)
    # Two samples, not one: a batch of one can let the tracer specialise a broadcast.
    example = torch.zeros((2, *shape))
    try:
        _fold_batchnorm(model, example)
    except Exception as error:
        raise UsageError(f"cannot export {type(module).__name__}: it does not accept inputs of "
                         f"shape {_shape_str(shape)} per sample ({_first_line(error)})") from error
    with _atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings():
                # The TorchScript exporter is deprecated in favour of the dynamo one, which
                # needs onnxscript at run time; it is the one asked for here, on purpose.
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                torch.onnx.export(
                    model, (example,), str(tmp), input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    opset_version=opset, do_constant_folding=True, dynamo=False,
                )
            if metadata:
                set_metadata(tmp, metadata)
            onnx.checker.check_model(str(tmp))
        except Exception as error:
            raise UsageError(f"cannot export {type(module).__name__} to ONNX opset {opset}: "
                             f"{_first_line(error)}") from error
    return path


def set_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Write ``metadata`` into the ``metadata_props`` of the ONNX file at ``path`` (keys
    already there are replaced). In place: for files being written, not published ones."""
    model = onnx.load(str(path))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (checkpoints record the ONNX file's hash)."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from error
    return digest.hexdigest()


def _as_samples(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 array with a batch dimension; DataError if unusable."""
    if not isinstance(x, np.ndarray):
        raise DataError(f"{what} must be a numpy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{what} must be floating point, got dtype {x.dtype}; "
                        "scale integer data to floats first")
    if x.ndim < 2:
        raise DataError(f"{what} needs a batch dimension: shape (N, ...), got {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        raise DataError(f"{what} has {finite.size - int(finite.sum())} NaN or infinite values "
                        "(after conversion to float32); clean or drop those samples")
    return x


# Parity limit, relative to the reference output's scale (its largest magnitude). Two correct
# float32 implementations of one network (PyTorch, and ONNX Runtime on folded BatchNorm and
# reordered sums) differ by a few float32 roundings (2**-24 = 6e-8) per layer, relative to
# the values summed: 2e-6 of the scale on the MobileNet frozen part at 3x128x128, 3e-7 on
# the mlp and cnn. 1e-4 leaves 50x room above that and is still 100x below what a weight
# tensor 1% off does to the outputs (about 1e-2 of their scale), at any output magnitude.
PARITY_RTOL = 1e-4
# Below float32's smallest normal number (2**-126) relative precision is gone: values are
# denormal, and ONNX Runtime may flush them to zero where PyTorch does not. Differences up
# to that size are therefore always accepted; it is the floor of the limit, in absolute terms.
_FLOAT32_FLOOR = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class Parity:
    """How far ONNX Runtime's outputs are from PyTorch's on the same samples.

    ``error`` and ``limit`` are in one unit: a fraction of ``scale``, the largest |PyTorch
    output| (floored so that ``limit * scale`` is at least float32's smallest normal)."""

    max_abs: float  # max |torch - ort| over every output value
    scale: float  # max |torch| over every output value (what error and limit are relative to)
    error: float  # max_abs / scale (the floored one): the scale-free difference
    limit: float  # the most error may be: the rtol check_parity was given
    n_samples: int  # inputs compared
    ok: bool  # error <= limit

    def describe(self) -> str:
        """One line: what was compared, the error in the limit's unit, ok or failed."""
        verdict = "ok" if self.ok else "FAILED"
        return (f"max |onnx - torch| {self.error:.1e} of the largest |torch output| "
                f"({self.scale:.1e}), limit {self.limit:.1e}, over {self.n_samples} "
                f"samples: {verdict}")


def check_parity(module: nn.Module, path: str | os.PathLike, *, samples: np.ndarray,
                 rtol: float = PARITY_RTOL) -> Parity:
    """Run ``module`` (an eval-mode copy) and the ONNX file on ``samples`` and compare.

    ``samples`` is float (N, *input_shape). The criterion is scale-free: the largest
    difference over every output value, divided by the largest |PyTorch output|, must be at
    most ``rtol`` (see PARITY_RTOL for why 1e-4). So outputs of 1e-9 (a MobileNet with
    random weights) are held to the same relative standard as outputs of 100, where a fixed
    absolute tolerance would pass anything small. NaN or inf in either output fails.
    """
    if not (isinstance(rtol, (int, float)) and math.isfinite(rtol) and rtol > 0):
        raise UsageError(f"parity rtol must be a positive number, got {rtol!r}")
    x = _as_samples(samples, "parity samples")
    if len(x) == 0:
        raise DataError("parity samples are empty: pass at least one sample")
    runner = OrtRunner(path, input_shape=x.shape[1:])
    model = _eval_copy(module)
    max_abs, scale = 0.0, 0.0
    with torch.inference_mode():
        for start in range(0, len(x), _CHUNK):
            chunk = x[start:start + _CHUNK]
            ref = model(torch.from_numpy(chunk)).float().numpy()
            out = runner(chunk)
            if out.shape != ref.shape:
                raise EdgeclError(f"{runner.path}: ONNX output shape {out.shape} differs from "
                                  f"PyTorch's {ref.shape}; the file is not this module")
            diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
            # NaN anywhere (a broken file) must fail the check rather than vanish in max().
            max_abs = max(max_abs, float(diff.max()) if np.isfinite(diff).all() else math.inf)
            scale = max(scale, float(np.abs(ref).max()) if np.isfinite(ref).all() else math.inf)
    floored = max(scale, _FLOAT32_FLOOR / rtol)
    error = max_abs / floored if math.isfinite(floored) else math.inf
    return Parity(max_abs=max_abs, scale=scale, error=error, limit=float(rtol),
                  n_samples=len(x), ok=error <= rtol)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over an array, in chunks."""

    def __init__(self, x: np.ndarray, input_name: str) -> None:
        self._chunks = iter([{input_name: x[i:i + _CHUNK]} for i in range(0, len(x), _CHUNK)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._chunks, None)


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, *,
                  calibration: np.ndarray) -> Path:
    """Static int8 quantization of an fp32 ONNX file; return ``out_path``.

    ``calibration`` holds float inputs (N, *input_shape) representative of real data; each
    activation's range is its min/max over them. The settings, and why:

    - QDQ format, uint8 activations, int8 weights (U8S8), per-channel weight scales, no
      reduce_range, after ``quant_pre_process`` (shape inference, graph clean-up).
    - Speed does not decide between the usable formats on this Xeon (AVX512-VNNI,
      AMX-int8). MobileNet frozen part at 3x128x128, 2 threads, median ms at batch 1 /
      batch 32 over 12 interleaved rounds: QOperator U8S8 1.30 / 24.8, QDQ U8S8 1.31 /
      24.0, QDQ S8S8 1.28 / 23.7 (fp32: 2.09 / 46.7). Per-tensor scales, reduce_range and
      skipping the pre-processing were within the same noise. Only QOperator with int8
      activations (S8S8) is slow, having no fused x86 kernel: 10 / 301.
      ``tools/bench_backbone.py --int8-variants`` repeats these timings.
    - So accuracy and portability decide. Per-channel scales matter for depthwise
      convolutions, whose channels have very different weight ranges: on a MobileNet
      (width 0.5, 32x32) trained 3 epochs on MNIST, the latent error was 6.2% per-channel
      against 7.5% per-tensor and 7.1% with reduce_range (7-bit weights, needed only on
      CPUs without VNNI), and predictions agreed with fp32 on 96% against 95%. Asymmetric
      uint8 activations use all 256 levels on ReLU outputs (symmetric int8 wastes half:
      10.8% latent error).
    - QDQ and QOperator give identical outputs; QDQ is ONNX Runtime's recommended format
      and the one other execution providers (TensorRT, OpenVINO) read, and U8S8 is the
      operand pair VNNI's and AMX's int8 dot products take without conversion.
    """
    # Imported here: the quantization tools pull in heavy modules that inference never needs.
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    x = _as_samples(calibration, "calibration data")
    if len(x) == 0:
        raise DataError("calibration data is empty: pass a few hundred representative inputs")
    runner = OrtRunner(fp32_path, input_shape=x.shape[1:])  # validates the file and the shape
    with tempfile.TemporaryDirectory() as tmpdir, _atomic_path(out_path) as tmp:
        prepared = Path(tmpdir) / "prepared.onnx"
        try:
            try:
                quant_pre_process(str(runner.path), str(prepared))
            except Exception:
                # Symbolic shape inference gives up on some graphs; quantizing the file
                # as it is works too, at worst with fewer tensors quantized.
                prepared = runner.path
            quantize_static(
                str(prepared), str(tmp), _Calibration(x, runner._input_name),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=False,
            )
            onnx.checker.check_model(str(tmp))
        except EdgeclError:
            raise
        except Exception as error:
            raise EdgeclError(f"int8 quantization of {runner.path} failed: "
                              f"{_first_line(error)}") from error
    return out_path


def _load_checked(path: Path) -> onnx.ModelProto:
    """Parse and check the file before ONNX Runtime sees it: ORT may crash on some bad files."""
    if not path.exists():
        raise UsageError(f"ONNX model file not found: {path}")
    if not path.is_file():
        raise UsageError(f"{path} is not a file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as error:
        raise UsageError(f"{path} is not a valid ONNX model ({_first_line(error)}); it may be "
                         "truncated or corrupted: export it again") from error
    if not model.graph.node:
        raise UsageError(f"{path} is not a valid ONNX model (empty graph); export it again")
    return model


def _dims(value_info: ort.NodeArg) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in value_info.shape]


class OrtRunner:
    """Run a single-input ONNX model in ONNX Runtime on float32 batches.

    ``providers`` is a preference list (from a device profile); providers this build of
    ONNX Runtime does not have are dropped with one :class:`EdgeclWarning`, and the CPU
    provider always ends the list. ``threads`` sets the intra-op thread pool (None: ONNX
    Runtime's default, one per physical core). ``input_shape``, when given, is the shape of
    one sample of the data; a model that expects another shape is refused here rather than
    on the first batch.
    """

    def __init__(self, path: str | os.PathLike, *, providers: Sequence[str] | None = None,
                 threads: int | None = None, input_shape: tuple[int, ...] | None = None
                 ) -> None:
        self.path = Path(path)
        _load_checked(self.path)
        wanted = _provider_list(providers)
        available = ort.get_available_providers()
        usable = [p for p in wanted if p in available]
        dropped = [p for p in wanted if p not in available]
        options = _session_options(threads)
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=usable)
        except Exception as error:
            raise UsageError(f"ONNX Runtime cannot load {self.path}: {_first_line(error)}; "
                             "export it again") from error
        self.provider: str = self._session.get_providers()[0]
        if dropped or self.provider != usable[0]:
            unused = dropped + [p for p in usable if p not in self._session.get_providers()]
            warnings.warn(f"execution provider(s) {', '.join(unused)} not available here; "
                          f"running {self.path.name} on {self.provider}", EdgeclWarning,
                          stacklevel=2)

        try:
            self._read_signature()
        except (UnicodeDecodeError, ValueError, RuntimeError) as error:
            # A flipped byte in a name or a dimension label passes onnx's checker.
            raise UsageError(f"{self.path} is not a valid ONNX model ({_first_line(error)}); "
                             "it may be corrupted: export it again") from error
        if input_shape is not None and not _shape_matches(self.input_shape, input_shape):
            raise UsageError(f"{self.path}: model expects {_shape_str(self.input_shape)} per "
                             f"sample, the data has {_shape_str(tuple(input_shape))}")

    def _read_signature(self) -> None:
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise UsageError(f"{self.path} has {len(inputs)} inputs ({names}); edgecl runs "
                             "models with exactly one input")
        if inputs[0].type != "tensor(float)":
            raise UsageError(f"{self.path} takes {inputs[0].type} input; edgecl feeds "
                             "float32 (tensor(float))")
        output = self._session.get_outputs()[0]
        in_dims, out_dims = _dims(inputs[0]), _dims(output)
        if not in_dims or not out_dims:
            raise UsageError(f"{self.path} has a scalar input or output; edgecl needs a batch "
                             "dimension first")
        self._input_name = inputs[0].name
        self._output_name = output.name
        self._batch: int | None = in_dims[0]  # None: dynamic
        self.input_shape: tuple[int | None, ...] = tuple(in_dims[1:])
        self.output_shape: tuple[int | None, ...] = tuple(out_dims[1:])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """float (N, *input_shape) -> float32 (N, *output_shape)."""
        x = _as_samples(x, "model input")
        if not _shape_matches(self.input_shape, x.shape[1:]):
            raise DataError(f"{self.path.name} expects {_shape_str(self.input_shape)} per "
                            f"sample, got an array of shape {x.shape} "
                            f"({_shape_str(x.shape[1:])} per sample)")
        if self._batch is not None and len(x) != self._batch:
            raise DataError(f"{self.path.name} has a fixed batch size of {self._batch}, got "
                            f"{len(x)} samples; export it with a dynamic batch dimension")
        if len(x) == 0 and None not in self.output_shape:
            return np.zeros((0, *self.output_shape), dtype=np.float32)
        try:
            (out,) = self._session.run([self._output_name], {self._input_name: x})
        except Exception as error:
            raise EdgeclError(f"ONNX Runtime failed on {self.path.name} with input of shape "
                              f"{x.shape}: {_first_line(error)}") from error
        out = np.asarray(out, dtype=np.float32)
        if not np.isfinite(out).all():
            raise EdgeclError(f"{self.path.name} produced NaN or infinite outputs from finite "
                              "inputs; the file may be corrupted (compare its sha256 with the "
                              "one recorded at export)")
        return out

    def run_torch(self, x: torch.Tensor) -> torch.Tensor:
        """Same as calling the runner, on a CPU tensor; returns a CPU float32 tensor."""
        if not isinstance(x, torch.Tensor):
            raise DataError(f"run_torch takes a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise DataError(f"model input must be floating point, got {x.dtype}")
        return torch.from_numpy(self(x.detach().cpu().float().numpy()))

    def __repr__(self) -> str:
        return (f"OrtRunner({str(self.path)!r}, provider={self.provider!r}, "
                f"input_shape={self.input_shape}, output_shape={self.output_shape})")


def _shape_matches(model: Sequence[int | None], data: Sequence[int]) -> bool:
    if len(model) != len(data):
        return False
    return all(m is None or m == d for m, d in zip(model, data, strict=True))


def _provider_list(providers: Sequence[str] | None) -> list[str]:
    if isinstance(providers, str):
        raise UsageError(f"providers must be a list of names, got the string {providers!r}")
    wanted: list[str] = []
    for p in providers or ():
        if not isinstance(p, str):
            raise UsageError(f"execution provider names must be strings, got {p!r}")
        if p not in wanted and p != CPU_PROVIDER:
            wanted.append(p)
    return [*wanted, CPU_PROVIDER]


def _session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UsageError(f"threads must be a positive integer, got {threads!r}")
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one model, one sequential graph: no parallel branches
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads block instead of spinning. Measured on a 2-core box (MobileNet
    # frozen part, 3x128x128, batch 1, 2 threads): spinning saves 0.4 ms of 1.9 (fp32) on
    # an idle machine but costs 2.5x when another process holds a core, and the spinning
    # threads would steal the cores from the PyTorch head update that follows each call.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: provider fallbacks are reported by us
    return options
