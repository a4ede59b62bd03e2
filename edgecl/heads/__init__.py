"""Trainable heads and their consolidation rules (CWR, CWR*)."""

from edgecl.heads.cwr import ConsolidatedOutput, cwr_star_consolidate

__all__ = ["ConsolidatedOutput", "cwr_star_consolidate"]
