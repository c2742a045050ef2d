"""Metrics (natural/robust accuracy, robust inaccuracy), the four-way partition and Pareto fronts."""

from robcli.analysis.metrics import (
    ModelView,
    attack_view,
    certify_view,
    summarize,
    view_from_table,
)
from robcli.analysis.pareto import pareto_front, pareto_mask
from robcli.analysis.partition import partition_frame, split_summary

__all__ = [
    "ModelView",
    "attack_view",
    "certify_view",
    "view_from_table",
    "summarize",
    "partition_frame",
    "split_summary",
    "pareto_mask",
    "pareto_front",
]
