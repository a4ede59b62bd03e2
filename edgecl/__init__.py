"""edgecl: continual learning on edge devices.

A frozen backbone feeds a small trainable head; latents of past data are replayed from a
byte-budgeted buffer; every strategy runs through one runtime loop.
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgecl.backbones import create_backbone, list_backbones, split_model  # noqa: E402
from edgecl.data import build_scenario, list_datasets, list_scenarios, load_dataset  # noqa: E402
from edgecl.errors import (  # noqa: E402
    BudgetError,
    CheckpointError,
    DataError,
    EdgeclError,
    ProfileError,
    UsageError,
)
from edgecl.labels import read_onnx_labels  # noqa: E402
from edgecl.profiles import list_profiles, load_profile  # noqa: E402
from edgecl.runtime import Learner, LearnerConfig  # noqa: E402
from edgecl.runtime.run import RunSpec, iter_run, run  # noqa: E402
from edgecl.strategies import Strategy, create_strategy, list_strategies  # noqa: E402

__all__ = [
    "BudgetError",
    "CheckpointError",
    "DataError",
    "EdgeclError",
    "Learner",
    "LearnerConfig",
    "ProfileError",
    "RunSpec",
    "Strategy",
    "UsageError",
    "__version__",
    "build_scenario",
    "create_backbone",
    "create_strategy",
    "iter_run",
    "list_backbones",
    "list_datasets",
    "list_profiles",
    "list_scenarios",
    "list_strategies",
    "load_dataset",
    "load_profile",
    "read_onnx_labels",
    "run",
    "split_model",
]
