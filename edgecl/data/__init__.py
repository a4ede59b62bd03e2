"""Datasets that need no download, user ``.npz`` files, and continual-learning scenarios."""

from __future__ import annotations

from edgecl.data.datasets import Dataset, list_datasets, load_dataset, load_npz, validate_arrays
from edgecl.data.scenarios import (
    Experience,
    Scenario,
    build_scenario,
    class_incremental,
    list_scenarios,
    new_instances_and_classes,
    online_stream,
)

__all__ = [
    "Dataset",
    "Experience",
    "Scenario",
    "build_scenario",
    "class_incremental",
    "list_datasets",
    "list_scenarios",
    "load_dataset",
    "load_npz",
    "new_instances_and_classes",
    "online_stream",
    "validate_arrays",
]
