"""Backbone forward latency: PyTorch eager fp32 against ONNX Runtime fp32 and int8.

    python tools/bench_backbone.py                       # MobileNet frozen part, 3x128x128
    python tools/bench_backbone.py --threads 1 --json backbone.json
    python tools/bench_backbone.py --backbone cnn --input-shape 1 28 28

Times the frozen part of a backbone (``split_model(model, latent_layer).frozen``), the part
that runs on every input, at batch 1 and batch 32, all in this one process and with the
same thread count for PyTorch and ONNX Runtime. Weights are random (speed does not depend
on them) but BatchNorm statistics come from synthetic images, so every layer works at a
realistic scale; int8 is calibrated on other synthetic images.

The PyTorch baseline is plain eager mode: eval, ``torch.inference_mode``, fp32, default
memory format. ``--extra-baselines`` also times channels_last and a frozen TorchScript trace,
for information; the targets are against eager. ONNX Runtime is timed through
:class:`edgecl.backbones.onnx.OrtRunner`, input checks included, as the learner calls it
(its pool threads block rather than spin between calls: see ``_session_options``).

Each backend runs in interleaved blocks (one untimed call, then timed ones), so slow drift of
a shared machine spreads over all of them; p50 and p95 are over every timed call. Targets
(issue 4): ORT fp32 at least 2.5x faster than eager at batch 1 and 1.2x at batch 32; ORT
int8 at least 3x faster than eager fp32 at both. The int8 latent error printed is large on
random weights (a random deep ReLU network amplifies any perturbation); on trained networks
see ``quantize_int8``'s docstring. Progress goes to stderr, the table to stdout; the exit
code is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from edgecl.backbones import create_backbone, list_backbones, split_model
from edgecl.backbones.onnx import OrtRunner, check_parity, export_onnx, quantize_int8

# --int8-variants: the other settings quantize_int8 was chosen against (its docstring).
INT8_VARIANTS = {
    "QOperator U8S8": {"quant_format": "QOperator", "activation_type": "QUInt8"},
    "QDQ S8S8": {"quant_format": "QDQ", "activation_type": "QInt8"},
    "QDQ U8S8 per-tensor": {"quant_format": "QDQ", "activation_type": "QUInt8",
                            "per_channel": False},
    "QDQ U8S8 reduce_range": {"quant_format": "QDQ", "activation_type": "QUInt8",
                              "reduce_range": True},
    "QOperator S8S8": {"quant_format": "QOperator", "activation_type": "QInt8"},
}

# (backend, batch) -> minimum speed-up of its p50 over torch eager's p50 at the same batch.
TARGETS = {
    ("ort-fp32", 1): 2.5,
    ("ort-fp32", 32): 1.2,
    ("ort-int8", 1): 3.0,
    ("ort-int8", 32): 3.0,
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synthetic_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth random images (noise upsampled 8x): spatially correlated, like real ones."""
    g = torch.Generator().manual_seed(seed)
    if len(shape) != 3:
        return torch.randn((n, *shape), generator=g).numpy()
    c, h, w = shape
    coarse = torch.randn(n, c, max(1, h // 8), max(1, w // 8), generator=g)
    return nn.functional.interpolate(coarse, size=(h, w), mode="bilinear").numpy()


def set_bn_stats(model: nn.Module, x: np.ndarray) -> None:
    """BatchNorm running statistics of ``x`` (cumulative average), then random affine terms."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), 16):
            model(torch.from_numpy(x[start:start + 16]))
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    model.eval()


def quantize_variant(fp32_path: Path, out_path: Path, calibration: np.ndarray,
                     settings: dict) -> Path:
    """quantize_int8 with other settings (per-channel, full range unless ``settings`` say)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader:
        def __init__(self) -> None:
            self.chunks = iter([{"input": calibration[i:i + 16]}
                                for i in range(0, len(calibration), 16)])

        def get_next(self) -> dict | None:
            return next(self.chunks, None)

    prepared = out_path.with_suffix(".prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared))
    quantize_static(str(prepared), str(out_path), Reader(),
                    quant_format=QuantFormat[settings["quant_format"]],
                    activation_type=QuantType[settings["activation_type"]],
                    weight_type=QuantType.QInt8,
                    per_channel=settings.get("per_channel", True),
                    reduce_range=settings.get("reduce_range", False))
    return out_path


def time_calls(fn: Callable[[], object], n: int) -> list[float]:
    fn()  # untimed: caches, lazy initialisation, other pools going back to sleep
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return times


def ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet", choices=list_backbones())
    parser.add_argument("--input-shape", type=int, nargs="+", default=[3, 128, 128])
    parser.add_argument("--width-mult", type=float, default=1.0, help="mobilenet only")
    parser.add_argument("--n-classes", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per backend")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved blocks the timed calls are split into")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--extra-baselines", action="store_true",
                        help="also time torch channels_last and a frozen TorchScript trace")
    parser.add_argument("--int8-variants", action="store_true",
                        help="also time the int8 settings quantize_int8 was chosen against")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = tuple(args.input_shape)
    options = {"width_mult": args.width_mult} if args.backbone == "mobilenet" else {}
    backbone = create_backbone(args.backbone, input_shape=shape, n_classes=args.n_classes,
                               options=options)
    log(f"{args.backbone} {shape}: BatchNorm statistics from synthetic images")
    set_bn_stats(backbone.model, synthetic_images(64, shape, seed=1))
    frozen = split_model(backbone.model, backbone.latent_layer).frozen.eval()
    frozen.requires_grad_(False)

    with tempfile.TemporaryDirectory() as tmp:
        log("exporting fp32 ONNX")
        fp32_path = export_onnx(frozen, Path(tmp) / "frozen.onnx", input_shape=shape)
        log("quantizing to int8 (calibration: 64 synthetic images)")
        calibration = synthetic_images(64, shape, seed=2)
        int8_path = quantize_int8(fp32_path, Path(tmp) / "frozen-int8.onnx",
                                  calibration=calibration)
        test = synthetic_images(32, shape, seed=3)
        parity = check_parity(frozen, fp32_path, samples=test)
        fp32_runner = OrtRunner(fp32_path, threads=args.threads, input_shape=shape)
        int8_runner = OrtRunner(int8_path, threads=args.threads, input_shape=shape)
        variants = {}
        for i, (label, settings) in enumerate(INT8_VARIANTS.items() if args.int8_variants
                                              else ()):
            log(f"quantizing the int8 variant {label}")
            path = quantize_variant(fp32_path, Path(tmp) / f"variant{i}.onnx", calibration,
                                    settings)
            variants[f"ort-int8 ({label})"] = OrtRunner(path, threads=args.threads,
                                                        input_shape=shape)
        reference = fp32_runner(test)
        output_max = float(np.abs(reference).max())
        int8_error = float(np.linalg.norm(int8_runner(test) - reference)
                           / np.linalg.norm(reference))
        sizes = {"fp32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size}

        rows = []
        for batch in args.batches:
            x = synthetic_images(batch, shape, seed=10 + batch)
            xt = torch.from_numpy(x)
            backends: dict[str, Callable[[], object]] = {"torch-eager": lambda xt=xt: frozen(xt)}
            if args.extra_baselines:
                if xt.dim() == 4:  # images only
                    cl_model = copy.deepcopy(frozen).to(memory_format=torch.channels_last)
                    xcl = xt.contiguous(memory_format=torch.channels_last)
                    backends["torch-channels-last"] = lambda m=cl_model, xcl=xcl: m(xcl)
                with torch.inference_mode():
                    traced = torch.jit.freeze(torch.jit.trace(frozen, xt).eval())
                backends["torch-jit-frozen"] = lambda m=traced, xt=xt: m(xt)
            backends["ort-fp32"] = lambda x=x: fp32_runner(x)
            backends["ort-int8"] = lambda x=x: int8_runner(x)
            for label, runner in variants.items():
                backends[label] = lambda x=x, runner=runner: runner(x)

            times: dict[str, list[float]] = {name: [] for name in backends}
            per_block = max(1, args.repeats // args.rounds)
            for block in range(args.rounds):
                log(f"batch {batch}: round {block + 1}/{args.rounds}")
                for name, fn in backends.items():
                    with torch.inference_mode():
                        times[name] += time_calls(fn, per_block)
            eager = statistics.median(times["torch-eager"])
            for name, values in times.items():
                p50 = statistics.median(values)
                target = TARGETS.get((name, batch))
                speedup = eager / p50
                rows.append({
                    "backend": name, "batch": batch, "p50_ms": p50,
                    "p95_ms": percentile(values, 95), "n": len(values),
                    "speedup_vs_eager": speedup, "target": target,
                    "pass": None if target is None else speedup >= target,
                })

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    header = (
        f"{args.backbone} frozen part (cut after {backbone.latent_layer}), input "
        f"{'x'.join(map(str, shape))}"
        + (f", width {args.width_mult}" if args.backbone == "mobilenet" else "")
        + f"; {args.threads} threads; {cpu_name()}"
        + f" (avx512_vnni: {'yes' if 'avx512_vnni' in flags else 'no'},"
        + f" amx_int8: {'yes' if 'amx_int8' in flags else 'no'});"
        + f" torch {torch.__version__}, onnxruntime {ort.__version__};"
        + f" {rows[0]['n']} timed calls per row, in {args.rounds} interleaved blocks.\n"
        + ("" if (args.backbone, shape) == ("mobilenet", (3, 128, 128)) else
           "The targets are the issue's for mobilenet at 3x128x128; here they are a yardstick.\n")
        + f"fp32 ONNX vs torch: max abs diff {parity.max_abs:.1e} on outputs up to "
        + f"{output_max:.3g}; int8 latent relative "
        + f"error {int8_error:.3f} (random weights); files: fp32 {sizes['fp32'] / 1e3:,.0f} "
        + f"kB, int8 {sizes['int8'] / 1e3:,.0f} kB.\n"
    )
    lines = ["| backend | batch | p50 ms | p95 ms | vs torch eager | target | result |",
             "|---|---:|---:|---:|---:|---:|:-:|"]
    for r in rows:
        target = "" if r["target"] is None else f">= {r['target']:.1f}x"
        result = "" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        lines.append(f"| {r['backend']} | {r['batch']} | {ms(r['p50_ms'])} | {ms(r['p95_ms'])} "
                     f"| {r['speedup_vs_eager']:.2f}x | {target} | {result} |")
    print(header)
    print("\n".join(lines))
    missed = [r for r in rows if r["pass"] is False]
    print(f"\n{'FAIL' if missed else 'PASS'}: "
          f"{sum(r['pass'] is True for r in rows)} of {sum(r['pass'] is not None for r in rows)}"
          " targets met")

    if args.json:
        args.json.write_text(json.dumps({
            "backbone": args.backbone, "input_shape": list(shape),
            "width_mult": args.width_mult if args.backbone == "mobilenet" else None,
            "latent_layer": backbone.latent_layer, "threads": args.threads,
            "repeats": rows[0]["n"], "rounds": args.rounds, "cpu": cpu_name(),
            "torch": torch.__version__, "onnxruntime": ort.__version__,
            "fp32_max_abs_diff": parity.max_abs, "output_max_abs": output_max,
            "int8_latent_relative_error": int8_error, "file_bytes": sizes, "rows": rows,
        }, indent=2))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
