"""Selector compositions H(x) = S(x) F_robust(x) + (1 - S(x)) F_core(x) (paper eq. 15), cascades, export."""

from robcli.compose.evaluate import evaluate_composition, sweep
from robcli.compose.selectors import (
    SELECTORS,
    Member,
    get_selector,
    list_selectors,
    ri_member,
    sr_member,
    sr_pointwise_member,
)

__all__ = ["SELECTORS", "Member", "get_selector", "list_selectors", "ri_member", "sr_member", "sr_pointwise_member",
           "evaluate_composition", "sweep"]
