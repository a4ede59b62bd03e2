"""Registries by name: a duplicate name warns, an unknown name says which names exist."""

from __future__ import annotations

import re
import warnings

import pytest

from edgecl._registry import Registry
from edgecl.backbones import create_backbone, list_backbones
from edgecl.errors import UsageError
from edgecl.memory import create_codec, list_codecs
from edgecl.strategies import create_strategy, list_strategies


def widgets() -> Registry[str]:
    registry: Registry[str] = Registry("widget")

    @registry.register("b")
    def make_b() -> str:
        """Builds b.

        More text that is not the summary.
        """
        return "b"

    @registry.register("a", summary="the a widget")
    def make_a(*, size: int = 1) -> str:
        return "a" * size

    return registry


def test_entries_are_listed_sorted_with_summaries() -> None:
    registry = widgets()
    assert registry.names() == ["a", "b"]
    assert [(e.name, e.summary) for e in registry.entries()] == [("a", "the a widget"),
                                                                  ("b", "Builds b.")]
    assert "a" in registry and "c" not in registry


def test_create_passes_options_to_the_factory() -> None:
    assert widgets().create("a", size=3) == "aaa"


def test_duplicate_registration_warns_and_the_later_one_wins() -> None:
    registry = widgets()
    with pytest.warns(UserWarning, match="widget 'a' registered twice; the later one wins"):
        @registry.register("a")
        def other_a() -> str:
            return "other"

    assert registry.create("a") == "other"
    assert registry.names() == ["a", "b"]


def test_first_registration_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        widgets()


def test_unknown_name_raises_usage_error_listing_known_names() -> None:
    with pytest.raises(UsageError, match=r"^unknown widget 'c'; known: a, b$"):
        widgets().get("c")


@pytest.mark.parametrize(
    ("create", "names", "kind"),
    [
        (lambda: create_strategy("nope"), list_strategies, "strategy"),
        (lambda: create_backbone("nope", input_shape=(4,), n_classes=2), list_backbones,
         "backbone"),
        (lambda: create_codec("nope"), list_codecs, "codec"),
    ],
)
def test_builtin_registries_name_every_known_entry(create, names, kind: str) -> None:
    with pytest.raises(UsageError) as err:
        create()
    message = str(err.value)
    assert message.startswith(f"unknown {kind} 'nope'")
    assert re.search(r"known: (.*)$", message).group(1) == ", ".join(names())


def test_builtin_names() -> None:
    # The names users type on the command line; a rename is a breaking change.
    assert set(list_strategies()) >= {"naive", "cumulative", "cwr", "cwr*", "latent-replay",
                                      "ar1*"}
    assert set(list_backbones()) >= {"mlp", "cnn", "mobilenet"}
    assert "fp32" in list_codecs()
