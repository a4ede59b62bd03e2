"""Firmware profiles: the built-ins load, every broken profile fails with one clear line."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecl.errors import ProfileError, UsageError
from edgecl.profiles import (
    PROFILE_DIR,
    Budget,
    DeviceSpec,
    Profile,
    list_profiles,
    load_profile,
    parse_profile,
    resolve_execution_providers,
    resolve_torch_device,
)

REQUIRED = ["cpu", "arm", "rpi4", "rpi-zero2", "jetson", "jetson-nano", "jetson-orin-nano"]

VALID: dict[str, Any] = {
    "name": "board",
    "description": "A test board",
    "device": {
        "cores": 4,
        "ram_mb": 2048,
        "sustained_gflops": 10.5,
        "memory_bandwidth_gbs": 12.8,
        "torch_device": "cpu",
        "execution_providers": ["CPUExecutionProvider"],
        "precision": "fp32",
        "threads": 4,
    },
    "budget": {"memory_mb": 256, "replay_mb": 8, "update_ms": 50, "replay_codec": "uint8"},
}


def dump_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON strings are TOML basic strings
    if isinstance(value, (int, float)):
        return repr(value)  # repr spells inf and nan the TOML way
    if isinstance(value, list):
        return "[" + ", ".join(dump_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)} = {dump_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(value)


def dump(doc: dict[str, Any]) -> str:
    """A small TOML writer: scalars first, then one [table] per dict value."""
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    lines = [f"{json.dumps(k)} = {dump_value(v)}" for k, v in scalars.items()]
    for key, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{json.dumps(key)}]")
            lines += [f"{json.dumps(k)} = {dump_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def mutated(change: Callable[[dict[str, Any]], Any]) -> str:
    doc = copy.deepcopy(VALID)
    change(doc)
    return dump(doc)


def assert_one_line(exc: ProfileError) -> str:
    message = str(exc)
    assert len(message.splitlines()) == 1, message
    assert message.startswith("profile ") or message.startswith("unknown profile "), message
    return message


# ----------------------------------------------------------------------------- built-ins


def test_required_builtins_exist() -> None:
    assert set(REQUIRED) <= set(list_profiles())
    assert list_profiles() == sorted(list_profiles())


@pytest.mark.parametrize("name", list_profiles())
def test_builtin_loads_and_is_consistent(name: str) -> None:
    profile = load_profile(name)
    assert profile.path is not None and profile.path.parent == PROFILE_DIR
    if profile.via_alias is None:
        assert profile.name == name == profile.path.stem
    else:
        assert profile.via_alias == name and profile.name != name
    device, budget = profile.device, profile.budget
    assert 0 < device.threads <= device.cores
    assert 0 < budget.replay_mb <= budget.memory_mb <= device.ram_mb
    assert device.execution_providers[-1] == "CPUExecutionProvider"
    # A JSON report embeds it; the round trip must not lose anything.
    assert json.loads(json.dumps(profile.to_dict())) == profile.to_dict()


@pytest.mark.parametrize("name", list_profiles())
def test_builtin_numeric_facts_cite_a_source(name: str) -> None:
    text = (PROFILE_DIR / f"{name}.toml").read_text(encoding="utf-8")
    for key in ("cores", "ram_mb", "sustained_gflops", "memory_bandwidth_gbs"):
        match = re.search(rf"^{key}\s*=.*$", text, flags=re.MULTILINE)
        if match is None:
            assert "alias" in text  # an alias holds no facts
            continue
        assert "#" in match.group(0), f"{name}: {key} has no source comment"


def test_jetson_is_an_alias_of_orin_nano() -> None:
    jetson = load_profile("jetson")
    orin = load_profile("jetson-orin-nano")
    assert jetson.name == "jetson-orin-nano" and jetson.via_alias == "jetson"
    assert (jetson.device, jetson.budget, jetson.path) == (orin.device, orin.budget, orin.path)
    assert jetson.to_dict()["via_alias"] == "jetson"


def test_field_tables_match_dataclasses() -> None:
    from edgecl import profiles

    assert list(profiles._DEVICE_FIELDS) == [f.name for f in fields(DeviceSpec)]
    assert list(profiles._BUDGET_FIELDS) == [f.name for f in fields(Budget)]


def test_small_boards_get_smaller_budgets_than_jetsons() -> None:
    zero, pi, orin = (load_profile(n) for n in ("rpi-zero2", "rpi4", "jetson-orin-nano"))
    assert zero.budget.replay_mb < pi.budget.replay_mb < orin.budget.replay_mb
    assert zero.device.sustained_gflops < pi.device.sustained_gflops < orin.device.sustained_gflops


# ----------------------------------------------------------------------------- loading


def test_load_from_explicit_path(tmp_path: Path) -> None:
    path = tmp_path / "board.toml"
    path.write_text(dump(VALID), encoding="utf-8")
    for arg in (str(path), path):
        profile = load_profile(arg)
        assert profile.name == "board" and profile.path == path
        assert profile.device == DeviceSpec(4, 2048, 10.5, 12.8, "cpu", ("CPUExecutionProvider",),
                                            "fp32", 4)
        assert profile.budget == Budget(256.0, 8.0, 50.0, "uint8")


def test_parse_profile_without_a_file() -> None:
    profile = parse_profile(dump(VALID), source="inline")
    assert isinstance(profile, Profile) and profile.path is None
    assert profile.to_dict()["path"] is None


def test_unknown_builtin_lists_known_and_suggests() -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("rpi-4")
    message = assert_one_line(info.value)
    assert "did you mean rpi4?" in message
    assert all(name in message for name in REQUIRED)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(lambda p: None, "file not found", id="missing"),
        pytest.param(lambda p: p.mkdir(), "cannot read the file", id="directory"),
        pytest.param(lambda p: p.write_bytes(b'name = "\xff"\n'), "not UTF-8", id="binary"),
        pytest.param(
            lambda p: p.write_text('name = "board"\n[device\ncores = 4\n'),
            "invalid TOML",
            id="bad-toml",
        ),
        pytest.param(
            lambda p: p.write_text(dump({**VALID, "name": "other"})),
            'name must match the file name "board", got "other"',
            id="name-not-stem",
        ),
    ],
)
def test_file_errors_name_the_file(
    tmp_path: Path, setup: Callable[[Path], Any], expected: str
) -> None:
    path = tmp_path / "board.toml"
    setup(path)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = assert_one_line(info.value)
    assert str(path) in message and expected in message


def test_invalid_toml_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "board.toml"
    path.write_text('name = "board"\ndescription = "x"\ncores = = 4\n', encoding="utf-8")
    with pytest.raises(ProfileError, match=r"line 3"):
        load_profile(path)


# ----------------------------------------------------------------------------- aliases


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(dump(doc), encoding="utf-8")
    return path


def alias(name: str, target: str) -> dict[str, Any]:
    return {"name": name, "description": f"alias of {target}", "alias": target}


def test_alias_to_a_sibling_then_to_a_builtin(tmp_path: Path) -> None:
    write(tmp_path / "mine.toml", alias("mine", "mid"))
    write(tmp_path / "mid.toml", alias("mid", "rpi4"))
    profile = load_profile(tmp_path / "mine.toml")
    assert profile.name == "rpi4" and profile.via_alias == "mine"
    assert profile.path == PROFILE_DIR / "rpi4.toml"


def test_alias_text_resolves_among_builtins() -> None:
    profile = parse_profile(dump(alias("gpu", "jetson")), source="inline")
    assert profile.name == "jetson-orin-nano" and profile.via_alias == "gpu"


@pytest.mark.parametrize(
    ("docs", "expected"),
    [
        pytest.param({"a": alias("a", "a")}, "alias forms a loop: a -> a", id="self"),
        pytest.param(
            {"a": alias("a", "b"), "b": alias("b", "a")},
            "alias forms a loop: a -> b -> a",
            id="two",
        ),
        pytest.param(
            {"a": alias("a", "b"), "b": alias("b", "c"), "c": alias("c", "a")},
            "alias forms a loop: a -> b -> c -> a",
            id="three",
        ),
        pytest.param({"a": alias("a", "nowhere")}, 'unknown profile "nowhere"', id="unknown"),
        pytest.param(
            {"a": {**alias("a", "rpi4"), "device": VALID["device"]}},
            "[device] is not allowed in an alias profile",
            id="alias-with-facts",
        ),
        pytest.param(
            {"a": {**alias("a", "rpi4"), "colour": "red"}},
            "colour is an unknown key",
            id="alias-unknown-key",
        ),
    ],
)
def test_broken_aliases(tmp_path: Path, docs: dict[str, dict[str, Any]], expected: str) -> None:
    for name, doc in docs.items():
        write(tmp_path / f"{name}.toml", doc)
    with pytest.raises(ProfileError) as info:
        load_profile(tmp_path / "a.toml")
    message = assert_one_line(info.value)
    assert expected in message and str(tmp_path) in message


# ----------------------------------------------------------------------------- validation


def _set(section: str | None, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        (doc if section is None else doc[section])[key] = value

    return change


def _drop(section: str | None, key: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        del (doc if section is None else doc[section])[key]

    return change


BROKEN = [
    # (id, change, key named in the message, problem named in the message)
    ("cores-string", _set("device", "cores", "four"), "[device].cores",
     'must be a positive integer, got "four"'),
    ("cores-bool", _set("device", "cores", True), "[device].cores", "got true"),
    ("cores-zero", _set("device", "cores", 0), "[device].cores", "positive integer"),
    ("cores-float", _set("device", "cores", 4.0), "[device].cores", "got 4.0"),
    ("ram-negative", _set("device", "ram_mb", -1), "[device].ram_mb", "got -1"),
    ("ram-huge", _set("device", "ram_mb", 2**70), "[device].ram_mb", "positive integer"),
    ("gflops-bool", _set("device", "sustained_gflops", False), "[device].sustained_gflops",
     "must be a positive number, got false"),
    ("gflops-nan", _set("device", "sustained_gflops", math.nan), "[device].sustained_gflops",
     "finite"),
    ("bandwidth-inf", _set("device", "memory_bandwidth_gbs", math.inf),
     "[device].memory_bandwidth_gbs", "finite"),
    ("bandwidth-zero", _set("device", "memory_bandwidth_gbs", 0.0),
     "[device].memory_bandwidth_gbs", "positive"),
    ("update-negative", _set("budget", "update_ms", -5), "[budget].update_ms", "positive"),
    ("replay-string", _set("budget", "replay_mb", "8MB"), "[budget].replay_mb", '"8MB"'),
    ("missing-cores", _drop("device", "cores"), "[device].cores", "is missing"),
    ("missing-update", _drop("budget", "update_ms"), "[budget].update_ms", "is missing"),
    ("missing-budget", _drop(None, "budget"), "[budget]", "is missing"),
    ("missing-name", _drop(None, "name"), "name", "is missing"),
    ("device-not-table", _set(None, "device", [1, 2]), "device", "must be a table"),
    ("typo-key", lambda d: d["device"].update(coers=d["device"].pop("cores")),
     "[device].coers", "unknown key; did you mean cores?"),
    ("typo-section", lambda d: d.update(budgte=d.pop("budget")), "budgte",
     "unknown key; did you mean budget?"),
    ("typo-top", _set(None, "descripton", "x"), "descripton", "did you mean description?"),
    ("stray-key", _set("budget", "colour", "red"), "[budget].colour", "unknown key"),
    ("misplaced-key", lambda d: d["budget"].update(threads=d["device"].pop("threads")),
     "[budget].threads", "is misplaced; it belongs in [device]"),
    ("misplaced-top", _set(None, "cores", 4), "cores", "it belongs in [device]"),
    ("precision", _set("device", "precision", "fp64"), "[device].precision",
     "must be one of fp32, fp16, int8"),
    ("torch-device", _set("device", "torch_device", "gpu"), "[device].torch_device",
     "must be one of cpu, cuda"),
    ("eps-empty", _set("device", "execution_providers", []), "[device].execution_providers",
     "non-empty array"),
    ("eps-string", _set("device", "execution_providers", "CPUExecutionProvider"),
     "[device].execution_providers", "non-empty array"),
    ("eps-number", _set("device", "execution_providers", ["CPUExecutionProvider", 3]),
     "[device].execution_providers", "item 1 must be a provider name string"),
    ("eps-typo", _set("device", "execution_providers", ["CUDAExecutionprovider"]),
     "[device].execution_providers", "did you mean CUDAExecutionProvider?"),
    ("eps-typo-prefix", _set("device", "execution_providers", ["CUADExecutionProvider"]),
     "[device].execution_providers", "did you mean CUDAExecutionProvider?"),
    ("eps-not-ep", _set("device", "execution_providers", ["cuda"]),
     "[device].execution_providers", "not an ONNX Runtime provider"),
    ("eps-duplicate", _set("device", "execution_providers",
                           ["CUDAExecutionProvider", "CUDAExecutionProvider"]),
     "[device].execution_providers", "more than once"),
    ("eps-cpu-first", _set("device", "execution_providers",
                           ["CPUExecutionProvider", "CUDAExecutionProvider"]),
     "[device].execution_providers", "must come last"),
    ("threads-over-cores", _set("device", "threads", 8), "[device].threads",
     "(8) exceeds [device].cores (4)"),
    ("memory-over-ram", _set("budget", "memory_mb", 4096), "[budget].memory_mb",
     "(4096) exceeds [device].ram_mb (2048)"),
    ("replay-over-memory", _set("budget", "replay_mb", 300), "[budget].replay_mb",
     "(300) exceeds [budget].memory_mb (256)"),
    ("name-empty", _set(None, "name", ""), "name", 'must be letters, digits'),
    ("name-slash", _set(None, "name", "a/b"), "name", 'got "a/b"'),
    ("description-number", _set(None, "description", 3), "description", "non-empty string"),
    ("odd-key-quoted", _set("device", "co\nres", 1), '[device]."co\\nres"', "unknown key"),
]


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [pytest.param(change, key, problem, id=case) for case, change, key, problem in BROKEN],
)
def test_broken_profile_names_file_key_and_problem(
    tmp_path: Path, change: Callable[[dict[str, Any]], Any], key: str, problem: str
) -> None:
    path = tmp_path / "board.toml"
    path.write_text(mutated(change), encoding="utf-8")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert isinstance(info.value, UsageError)  # the CLI maps it to exit code 2
    message = assert_one_line(info.value)
    assert message.startswith(f"profile board ({path}): ")
    assert key in message and problem in message, message


def test_parse_profile_names_its_source() -> None:
    with pytest.raises(ProfileError, match=r"^profile my text: \[device\]\.cores "):
        parse_profile(mutated(_set("device", "cores", "four")), source="my text")


def test_unknown_execution_provider_with_new_name_is_accepted() -> None:
    # A future onnxruntime may ship EPs this version of edgecl has never heard of.
    text = mutated(_set("device", "execution_providers", ["FancyNpuExecutionProvider"]))
    assert parse_profile(text, source="t").device.execution_providers == (
        "FancyNpuExecutionProvider",
    )


# ----------------------------------------------------------------------------- fuzzing

toml_values = st.recursive(
    st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["fp16", "int8", "cuda", "cpu", "CPUExecutionProvider", "rpi4", "jetson"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
key_names = st.sampled_from(
    ["name", "description", "alias", "device", "budget", "cores", "ram_mb", "threads",
     "sustained_gflops", "memory_bandwidth_gbs", "torch_device", "execution_providers",
     "precision", "memory_mb", "replay_mb", "update_ms"]
) | st.text(max_size=8)


def check_parse(text: str) -> None:
    """parse_profile either returns a consistent Profile or raises a one-line ProfileError."""
    try:
        profile = parse_profile(text, source="fuzz")
    except ProfileError as exc:
        assert_one_line(exc)
        return
    device, budget = profile.device, profile.budget
    assert 0 < device.threads <= device.cores
    assert 0 < budget.replay_mb <= budget.memory_mb <= device.ram_mb
    for number in (device.sustained_gflops, device.memory_bandwidth_gbs, budget.update_ms):
        assert math.isfinite(number) and number > 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_fuzz_random_text(text: str) -> None:
    check_parse(text)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(dump(VALID).splitlines() + ["[device]", "[budget]", "[[device]]", "= 1"])
        | st.text(alphabet='[]="#.,{}\n abc1', max_size=15),
        max_size=20,
    )
)
def test_fuzz_toml_ish_lines(lines: list[str]) -> None:
    check_parse("\n".join(lines))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([None, "device", "budget"]),
            st.sampled_from(["set", "delete"]),
            key_names,
            toml_values,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_fuzz_mutations_of_a_valid_profile(
    edits: list[tuple[str | None, str, str, Any]],
) -> None:
    doc = copy.deepcopy(VALID)
    for section, action, key, value in edits:
        table = doc if section is None else doc.get(section)
        if not isinstance(table, dict):
            continue
        if action == "delete":
            table.pop(key, None)
        else:
            table[key] = value
    check_parse(dump(doc))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_character_edits(data: st.DataObject) -> None:
    text = dump(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 4)))
        text = text[:i] + data.draw(st.text(max_size=3)) + text[j:]
    check_parse(text)


# ----------------------------------------------------------------------------- resolution

cuda_available = pytest.importorskip("torch").cuda.is_available()


@pytest.mark.skipif(cuda_available, reason="checks the fallback on a machine without CUDA")
def test_cuda_profile_falls_back_to_cpu_here() -> None:
    device, warning = resolve_torch_device(load_profile("jetson-orin-nano"))
    assert device == "cpu"
    assert warning == (
        "profile jetson-orin-nano wants CUDA, which this machine lacks; running on CPU"
    )


def test_torch_device_resolution() -> None:
    orin, pi = load_profile("jetson-orin-nano"), load_profile("rpi4")
    assert resolve_torch_device(orin, cuda_available=True) == ("cuda", None)
    assert resolve_torch_device(orin, cuda_available=False)[0] == "cpu"
    assert resolve_torch_device(pi) == ("cpu", None)


def test_execution_providers_on_this_machine() -> None:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    providers, warning = resolve_execution_providers(load_profile("jetson-nano"))
    assert providers[-1] == "CPUExecutionProvider"
    assert all(ep in available for ep in providers)
    missing = [
        ep for ep in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if ep not in available
    ]
    if missing:
        assert warning is not None and all(ep in warning for ep in missing)
    else:
        assert warning is None


def test_execution_providers_keep_order_and_warn_about_dropped() -> None:
    orin = load_profile("jetson-orin-nano")
    providers, warning = resolve_execution_providers(
        orin, available=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert warning == (
        "profile jetson-orin-nano wants TensorrtExecutionProvider, which this onnxruntime build "
        "lacks; using CUDAExecutionProvider, CPUExecutionProvider"
    )
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_execution_providers(orin, available=everything) == (everything, None)


def test_cpu_provider_is_appended_when_a_profile_leaves_it_out() -> None:
    text = mutated(_set("device", "execution_providers", ["XnnpackExecutionProvider"]))
    profile = parse_profile(text, source="t")
    providers, warning = resolve_execution_providers(profile, available=["CPUExecutionProvider"])
    assert providers == ["CPUExecutionProvider"]
    assert warning is not None and "XnnpackExecutionProvider" in warning
    providers, warning = resolve_execution_providers(
        profile, available=["XnnpackExecutionProvider", "CPUExecutionProvider"]
    )
    assert providers == ["XnnpackExecutionProvider", "CPUExecutionProvider"] and warning is None


def test_every_replay_codec_a_profile_may_name_is_registered():
    from edgecl.memory import list_codecs
    from edgecl.profiles import REPLAY_CODECS

    assert set(REPLAY_CODECS) <= set(list_codecs())
