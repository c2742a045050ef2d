"""Pareto fronts and metric helpers: known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from robcli.analysis.pareto import pareto_front, pareto_mask


def test_pareto_mask_known_answer():
    x = [1, 2, 3, 2, 3, np.nan, 0.5]
    y = [3, 2, 1, 1, 1, 9, 3]
    assert pareto_mask(x, y).tolist() == [True, True, True, False, True, False, False]


def test_pareto_front_minimizes_robust_inaccuracy():
    df = pd.DataFrame({"robust_inaccuracy": [0.01, 0.02, 0.005, 0.03], "robust_acc": [0.8, 0.85, 0.7, 0.84]})
    f = pareto_front(df, "robust_inaccuracy", "robust_acc")
    assert f.index.tolist() == [2, 0, 1]


def test_pareto_matches_brute_force():
    rng = np.random.default_rng(0)
    x, y = rng.random(200).round(1), rng.random(200).round(1)
    m = pareto_mask(x, y)
    brute = [not any((x[j] >= x[i] and y[j] >= y[i] and (x[j] > x[i] or y[j] > y[i])) for j in range(200))
             for i in range(200)]
    assert m.tolist() == brute


def test_metric_directions_and_parse():
    import pytest

    from robcli.analysis.pareto import METRICS, direction, parse_metrics
    from robcli.errors import UsageError

    assert direction("robust_inaccuracy") == "lower" and direction("robust_acc") == "higher"
    assert all(direction(m) == "higher" for m in METRICS if m != "robust_inaccuracy")
    assert parse_metrics(" robust_acc , robust_inaccuracy ") == ("robust_acc", "robust_inaccuracy")
    with pytest.raises(UsageError, match="valid: nat_acc"):
        parse_metrics("robust_acc,accuracy")
