"""Continual-learning strategies, registered by name (``create_strategy("ar1*")``)."""

# Imported explicitly so that each module registers its strategies.
from edgecl.strategies import ar1, baselines, cwr, exstream, remind, replay  # noqa: F401
from edgecl.strategies.base import (
    STRATEGIES,
    StepPlan,
    Strategy,
    UpdateContext,
    create_strategy,
    list_strategies,
)

__all__ = [
    "STRATEGIES",
    "StepPlan",
    "Strategy",
    "UpdateContext",
    "create_strategy",
    "list_strategies",
]
