"""Firmware profiles: what a target device can do and what the learner may spend on it.

A profile is a TOML file in ``edgecl/firmware_profiles/`` (a *built-in*, picked by name:
``--profile rpi4``) or anywhere on disk (picked by path: ``--profile ./myboard.toml``)::

    name = "rpi4"                  # must equal the file name without .toml
    description = "Raspberry Pi 4 Model B, ..."

    [device]                       # facts about the hardware; each one cites its source
    cores = 4                      # CPU cores
    ram_mb = 4096                  # RAM the OS sees (shared with the GPU on a Jetson)
    sustained_gflops = 14.4        # fp32, sustained, of the unit named by torch_device
    memory_bandwidth_gbs = 12.8    # peak DRAM bandwidth from the memory spec
    torch_device = "cpu"           # "cpu" | "cuda"
    execution_providers = ["CPUExecutionProvider"]  # ONNX Runtime EPs, preferred first
    precision = "int8"             # frozen backbone: "fp32" | "fp16" | "int8"
    threads = 4                    # intra-op threads, at most `cores`

    [budget]                       # what the learner may spend
    memory_mb = 1024               # learner memory, at most ram_mb
    replay_mb = 16                 # replay buffer bytes, part of memory_mb
    update_ms = 50                 # latency of one update
    replay_codec = "uint8"         # replay storage: fp32 | fp16 | uint8 | pq

Every key is required and unknown keys are errors, so a typo never silently falls back to a
default. A profile may instead be an *alias*: ``name``, ``description`` and
``alias = "other"`` and nothing else. It loads as ``other`` (looked up next to the alias
file first, then among the built-ins) with :attr:`Profile.via_alias` recording the name the
user asked for; reports then name the concrete device, which is what reproduces a run.

``sustained_gflops`` is derived, not measured here: cores (or CUDA cores) x clock x fp32
FLOPs per cycle gives the peak, times a sustained factor of 0.3 on CPUs and 0.4 on GPUs for
what small-batch PyTorch training keeps up under an edge board's power and thermal limits
(a tuned GEMM reaches 60-80 % of peak; small layers and batch sizes reach much less).
``memory_bandwidth_gbs`` is the peak from the memory spec; streaming code sees roughly a
third (small boards) to three quarters (desktops) of it. Treat both as inputs to a roofline
estimate, not promises.

``execution_providers`` lists ONNX Runtime EPs, preferred first; the CPU EP, if listed, must
come last (ONNX Runtime gives it every node it can take), and it is appended at resolution
time when missing.

Every mistake in a profile raises :class:`~edgecl.errors.ProfileError` with one line that
names the file, the key and the problem.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from edgecl.errors import ProfileError

__all__ = [
    "CPU_PROVIDER",
    "DEFAULT_PROFILE",
    "PRECISIONS",
    "PROFILE_DIR",
    "TORCH_DEVICES",
    "Budget",
    "DeviceSpec",
    "Profile",
    "list_profiles",
    "load_profile",
    "parse_profile",
    "resolve_execution_providers",
    "resolve_torch_device",
]

PROFILE_DIR = Path(__file__).resolve().parent / "firmware_profiles"
DEFAULT_PROFILE = "cpu"
PRECISIONS = ("fp32", "fp16", "int8")
TORCH_DEVICES = ("cpu", "cuda")
# Kept literal (not read from the codec registry) so that profiles parse without torch.
REPLAY_CODECS = ("fp32", "fp16", "uint8", "pq", "opq")
CPU_PROVIDER = "CPUExecutionProvider"

# ONNX Runtime EP names, current and recently removed, to catch typos without importing
# onnxruntime at parse time. A name not listed and not close to one is accepted: newer
# onnxruntime builds add EPs, and resolve_execution_providers drops absent ones anyway.
_KNOWN_PROVIDERS = (
    "ACLExecutionProvider",
    "ArmNNExecutionProvider",
    "AzureExecutionProvider",
    "CANNExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "DmlExecutionProvider",
    "DnnlExecutionProvider",
    "JsExecutionProvider",
    "MIGraphXExecutionProvider",
    "NnapiExecutionProvider",
    "NvTensorRTRTXExecutionProvider",
    "OpenVINOExecutionProvider",
    "QNNExecutionProvider",
    "RknpuExecutionProvider",
    "ROCMExecutionProvider",
    "SNPEExecutionProvider",
    "TensorrtExecutionProvider",
    "TvmExecutionProvider",
    "VitisAIExecutionProvider",
    "VSINPUExecutionProvider",
    "WebGpuExecutionProvider",
    "WebNNExecutionProvider",
    "XnnpackExecutionProvider",
)
_EP_SUFFIX = "ExecutionProvider"
# Names double as CLI arguments and file names, so keep them to a portable alphabet.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# TOML integers are 64-bit; tomllib does not enforce it, and float() of a larger int overflows.
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class DeviceSpec:
    """Hardware facts of the target device."""

    cores: int  # CPU cores
    ram_mb: int  # RAM the OS sees; on a Jetson the GPU shares it
    sustained_gflops: float  # fp32, sustained, of the unit named by torch_device
    memory_bandwidth_gbs: float  # peak DRAM bandwidth
    torch_device: str  # "cpu" | "cuda"
    execution_providers: tuple[str, ...]  # ONNX Runtime EPs, preferred first
    precision: str  # preferred precision of the frozen backbone: fp32 | fp16 | int8
    threads: int  # intra-op threads for torch and ONNX Runtime


@dataclass(frozen=True)
class Budget:
    """What one learner may spend on the device."""

    memory_mb: float  # learner memory: model, optimizer state, replay buffer
    replay_mb: float  # replay buffer bytes, part of memory_mb
    update_ms: float  # latency of one update step
    replay_codec: str  # how replayed latents are stored: fp32 | fp16 | uint8 | pq | opq


@dataclass(frozen=True)
class Profile:
    """A validated firmware profile."""

    name: str
    description: str
    path: Path | None  # the file it came from; None for text given to parse_profile
    device: DeviceSpec
    budget: Budget
    via_alias: str | None = None  # the alias the user named, when loaded through one

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, for reports."""
        device = asdict(self.device)
        device["execution_providers"] = list(self.device.execution_providers)
        return {
            "name": self.name,
            "description": self.description,
            "path": None if self.path is None else str(self.path),
            "via_alias": self.via_alias,
            "device": device,
            "budget": asdict(self.budget),
        }


# --------------------------------------------------------------------------- public API


def list_profiles() -> list[str]:
    """Names of the built-in profiles, sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml") if p.is_file())


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """Load a built-in profile by name, or a profile file by path.

    A string is a path when it ends in ``.toml`` or contains a path separator; otherwise it
    is a built-in name (so a stray file called ``rpi4`` in the working directory never
    shadows the built-in ``rpi4``).
    """
    return _load_file(_locate(name_or_path), chain=())


def parse_profile(text: str, *, source: str, path: Path | None = None) -> Profile:
    """Parse and validate profile text; ``source`` names it in error messages.

    With ``path``, ``name`` must equal the file stem and an alias is looked up next to that
    file before the built-ins; without it, an alias resolves among the built-ins only.
    """
    if path is None:
        return _resolve(_parse_document(text, source=source), source=source, base=None, chain=())
    stem = Path(path).stem
    doc = _parse_document(text, source=source, stem=stem)
    return _resolve(doc, source=source, base=Path(path), chain=(stem,))


def resolve_torch_device(
    profile: Profile, *, cuda_available: bool | None = None
) -> tuple[str, str | None]:
    """The torch device to run on here, and a warning when the profile's is unavailable.

    ``cuda_available`` overrides the probe (``torch.cuda.is_available()``), for tests and
    for callers that already know.
    """
    if profile.device.torch_device != "cuda":
        return profile.device.torch_device, None
    if cuda_available is None:
        import torch  # lazy: listing or validating profiles should not pay for torch

        cuda_available = torch.cuda.is_available()
    if cuda_available:
        return "cuda", None
    return "cpu", f"profile {profile.name} wants CUDA, which this machine lacks; running on CPU"


def resolve_execution_providers(
    profile: Profile, *, available: Collection[str] | None = None
) -> tuple[list[str], str | None]:
    """The profile's ONNX Runtime EPs that exist here, in its order, ending with the CPU EP.

    Returns a warning naming the dropped EPs, or None. ``available`` overrides the probe
    (``onnxruntime.get_available_providers()``).
    """
    if available is None:
        import onnxruntime  # lazy, as above

        available = onnxruntime.get_available_providers()
    wanted = [ep for ep in profile.device.execution_providers if ep != CPU_PROVIDER]
    kept = [ep for ep in wanted if ep in available]
    dropped = [ep for ep in wanted if ep not in available]
    # Every onnxruntime build has the CPU EP; last, so it only runs what the others refuse.
    kept.append(CPU_PROVIDER)
    if not dropped:
        return kept, None
    return kept, (
        f"profile {profile.name} wants {', '.join(dropped)}, which this onnxruntime build "
        f"lacks; using {', '.join(kept)}"
    )


# --------------------------------------------------------------------------- files and aliases


def _locate(name_or_path: str | os.PathLike[str]) -> Path:
    text = os.fspath(name_or_path)
    is_path = (
        not isinstance(name_or_path, str)
        or text.endswith(".toml")
        or os.sep in text
        or "/" in text
        or (os.altsep is not None and os.altsep in text)
    )
    if is_path:
        return Path(text)
    path = PROFILE_DIR / f"{text}.toml"
    if not path.is_file():
        raise ProfileError(_one_line(f"unknown profile {_show(text)}; {_known_hint(text)}"))
    return path


def _known_hint(name: str) -> str:
    known = list_profiles()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{hint}built-in profiles: {', '.join(known)}; or give a path to a .toml file"


def _load_file(path: Path, *, chain: tuple[str, ...]) -> Profile:
    source = f"{path.stem} ({path})"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(_one_line(f"profile {source}: file not found")) from None
    except UnicodeDecodeError as exc:
        raise ProfileError(_one_line(f"profile {source}: not UTF-8 text ({exc.reason})")) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ProfileError(_one_line(f"profile {source}: cannot read the file: {reason}")) from None
    doc = _parse_document(text, source=source, stem=path.stem)
    return _resolve(doc, source=source, base=path, chain=(*chain, path.stem))


def _resolve(
    doc: Profile | _Alias, *, source: str, base: Path | None, chain: tuple[str, ...]
) -> Profile:
    if isinstance(doc, Profile):
        return replace(doc, path=base)
    target = doc.target
    if target == doc.name or target in chain:
        loop = " -> ".join((*chain, target)) if chain else f"{doc.name} -> {target}"
        raise _error(source, "alias", f"forms a loop: {loop}")
    sibling = None if base is None else base.with_name(f"{target}.toml")
    if sibling is not None and sibling.is_file():
        path = sibling
    elif (PROFILE_DIR / f"{target}.toml").is_file():
        path = PROFILE_DIR / f"{target}.toml"
    else:
        raise _error(
            source, "alias", f"names an unknown profile {_show(target)}; " + _known_hint(target)
        )
    resolved = _load_file(path, chain=chain or (doc.name,))
    # The outermost alias wins (it is replaced last): that is the name the user typed.
    return replace(resolved, via_alias=doc.name)


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Alias:
    name: str
    target: str


class _Invalid(Exception):
    """A value failed a check; the caller adds the file and the key."""


def _error(source: str, where: str, problem: str) -> ProfileError:
    return ProfileError(_one_line(f"profile {source}: {where} {problem}"))


def _one_line(message: str) -> str:
    # Values are shown escaped, but a path or a parser message could still carry a line
    # break; the CLI promises exactly one line on stderr.
    return " ".join(message.splitlines())


def _show(value: Any) -> str:
    """A short, one-line rendering of a TOML value for error messages, in TOML spelling."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return '"' + "".join(map(_escape, shown)) + '"'
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= 24 else text[:21] + "..."
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"an array of {len(value)} item{'s' * (len(value) != 1)}"
    return f"a {type(value).__name__} ({value})"  # TOML dates and times


def _escape(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    return char if char.isprintable() else char.encode("unicode_escape").decode("ascii")


def _key(section: str | None, key: str) -> str:
    bare = re.fullmatch(r"[A-Za-z0-9_-]+", key) is not None
    shown = key if bare else _show(key)
    return shown if section is None else f"[{section}].{shown}"


@dataclass(frozen=True)
class _Rule:
    """How to check one key: `check` returns the value normalised or raises _Invalid."""

    expects: str  # what to write, for the "is missing" message
    check: Callable[[Any], Any]


def _positive_int(value: Any) -> int:
    # bool is an int subclass in Python; `cores = true` must not mean one core.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _INT64_MAX:
        raise _Invalid(f"must be a positive integer, got {_show(value)}")
    return value


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(f"must be a positive number, got {_show(value)}")
    if isinstance(value, int) and abs(value) > _INT64_MAX:
        raise _Invalid(f"must be a positive finite number, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise _Invalid(f"must be a positive finite number, got {_show(value)}")
    return number


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"must be a non-empty string, got {_show(value)}")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or _NAME_RE.fullmatch(value) is None:
        raise _Invalid(
            "must be letters, digits, '.', '_' or '-', starting with a letter or digit, "
            f"got {_show(value)}"
        )
    return value


def _choice(options: tuple[str, ...]) -> _Rule:
    listed = ", ".join(options)

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            close = difflib.get_close_matches(value, options, n=1) if isinstance(value, str) else []
            hint = f"; did you mean {close[0]}?" if close else ""
            raise _Invalid(f"must be one of {listed}, got {_show(value)}{hint}")
        return value

    return _Rule(f"one of {listed}", check)


def _providers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid(
            "must be a non-empty array of ONNX Runtime provider names, e.g. "
            f'["{CPU_PROVIDER}"], got {_show(value)}'
        )
    for i, ep in enumerate(value):
        if not isinstance(ep, str):
            raise _Invalid(f"item {i} must be a provider name string, got {_show(ep)}")
        if ep in _KNOWN_PROVIDERS:
            continue
        suggestion = _provider_suggestion(ep)
        if suggestion is not None:
            raise _Invalid(
                f"item {i} {_show(ep)} is not an ONNX Runtime provider; did you mean {suggestion}?"
            )
        if not ep.endswith(_EP_SUFFIX):
            raise _Invalid(
                f"item {i} {_show(ep)} is not an ONNX Runtime provider name "
                f"(those end in {_EP_SUFFIX})"
            )
    duplicates = sorted({ep for ep in value if value.count(ep) > 1})
    if duplicates:
        raise _Invalid(f"lists {', '.join(duplicates)} more than once")
    if CPU_PROVIDER in value and value[-1] != CPU_PROVIDER:
        # ONNX Runtime assigns nodes to EPs in list order and the CPU EP takes every node,
        # so any EP listed after it would never run.
        raise _Invalid(
            f"lists {CPU_PROVIDER} before {value[-1]}; it must come last, or the EPs after it "
            "never run"
        )
    return tuple(value)


def _provider_suggestion(ep: str) -> str | None:
    by_lower = {known.lower(): known for known in _KNOWN_PROVIDERS}
    if ep.lower() in by_lower:
        return by_lower[ep.lower()]
    # Compare what precedes the suffix: the long shared suffix makes every full name "close".
    prefix = ep[: -len(_EP_SUFFIX)] if ep.endswith(_EP_SUFFIX) else ep
    prefixes = {known[: -len(_EP_SUFFIX)].lower(): known for known in _KNOWN_PROVIDERS}
    close = difflib.get_close_matches(prefix.lower(), prefixes, n=1, cutoff=0.75)
    return prefixes[close[0]] if close else None


_POSITIVE_INT = _Rule("a positive integer", _positive_int)
_POSITIVE_NUMBER = _Rule("a positive number", _positive_number)
_NAME = _Rule("a name of letters, digits, '.', '_' or '-'", _name)
_TOP_FIELDS = {"name": _NAME, "description": _Rule("a non-empty string", _text)}
_ALIAS_FIELDS = {**_TOP_FIELDS, "alias": _NAME}
_DEVICE_FIELDS = {
    "cores": _POSITIVE_INT,
    "ram_mb": _POSITIVE_INT,
    "sustained_gflops": _POSITIVE_NUMBER,
    "memory_bandwidth_gbs": _POSITIVE_NUMBER,
    "torch_device": _choice(TORCH_DEVICES),
    "execution_providers": _Rule(
        f'a non-empty array of ONNX Runtime provider names, e.g. ["{CPU_PROVIDER}"]', _providers
    ),
    "precision": _choice(PRECISIONS),
    "threads": _POSITIVE_INT,
}
_BUDGET_FIELDS = {
    "memory_mb": _POSITIVE_NUMBER,
    "replay_mb": _POSITIVE_NUMBER,
    "update_ms": _POSITIVE_NUMBER,
    "replay_codec": _choice(REPLAY_CODECS),
}
_SECTIONS = ("device", "budget")


def _home_of(key: str) -> str | None:
    """Where a known key belongs, for a key put in the wrong table; None if it is unknown."""
    if key in _ALIAS_FIELDS or key in _SECTIONS:
        return "at the top level"
    if key in _DEVICE_FIELDS:
        return "in [device]"
    return "in [budget]" if key in _BUDGET_FIELDS else None


def _parse_document(text: str, *, source: str, stem: str | None = None) -> Profile | _Alias:
    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer too long to convert
        raise ProfileError(_one_line(f"profile {source}: invalid TOML: {exc}")) from None
    except RecursionError:
        raise ProfileError(f"profile {source}: invalid TOML: nested too deeply") from None

    def fail(where: str, problem: str) -> NoReturn:
        raise _error(source, where, problem)

    def check_keys(table: Mapping[str, Any], section: str | None, known: list[str]) -> None:
        here = "at the top level" if section is None else f"in [{section}]"
        for key in table:
            if key in known:
                continue
            home = _home_of(key)
            if home is not None and home != here:
                fail(_key(section, key), f"is misplaced; it belongs {home}")
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"expected {', '.join(known)}"
            fail(_key(section, key), f"is an unknown key; {hint}")

    def read(
        table: Mapping[str, Any], section: str | None, spec: dict[str, _Rule]
    ) -> dict[str, Any]:
        values = {}
        for key, rule in spec.items():
            if key not in table:
                fail(_key(section, key), f"is missing; add it ({rule.expects})")
            try:
                values[key] = rule.check(table[key])
            except _Invalid as exc:
                fail(_key(section, key), str(exc))
        return values

    is_alias = "alias" in data
    if is_alias:
        for section in _SECTIONS:
            if section in data:
                fail(
                    f"[{section}]",
                    "is not allowed in an alias profile; an alias takes "
                    f"everything from the profile it names ({_show(data['alias'])})",
                )
    top_spec = _ALIAS_FIELDS if is_alias else _TOP_FIELDS
    check_keys(data, None, [*top_spec, *_SECTIONS])
    sections = {"device": _DEVICE_FIELDS, "budget": _BUDGET_FIELDS}
    for section, spec in sections.items():
        if section in data and isinstance(data[section], dict):
            # All key checks first: a misplaced key would otherwise surface as a missing one.
            check_keys(data[section], section, list(spec))

    top = read(data, None, top_spec)
    if stem is not None and top["name"] != stem:
        fail("name", f"must match the file name {_show(stem)}, got {_show(top['name'])}")
    if is_alias:
        return _Alias(name=top["name"], target=top["alias"])

    tables = {}
    for section, spec in sections.items():
        if section not in data:
            fail(f"[{section}]", f"is missing; add the table with {', '.join(spec)}")
        if not isinstance(data[section], dict):
            fail(f"[{section}]", f"must be a table, got {_show(data[section])}")
        tables[section] = read(data[section], section, spec)
    device = DeviceSpec(**tables["device"])
    budget = Budget(**tables["budget"])

    # Contradictions between facts: each names the key to change first.
    if device.threads > device.cores:
        fail(
            "[device].threads",
            f"({device.threads}) exceeds [device].cores ({device.cores}); "
            "more threads than cores only adds contention",
        )
    if budget.memory_mb > device.ram_mb:
        fail(
            "[budget].memory_mb",
            f"({budget.memory_mb:g}) exceeds [device].ram_mb ({device.ram_mb})",
        )
    if budget.replay_mb > budget.memory_mb:
        fail(
            "[budget].replay_mb",
            f"({budget.replay_mb:g}) exceeds [budget].memory_mb "
            f"({budget.memory_mb:g}); the replay buffer is part of the learner's memory",
        )
    return Profile(
        name=top["name"], description=top["description"], path=None, device=device, budget=budget
    )
