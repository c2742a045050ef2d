"""Randomized-smoothing certification (Cohen et al., 2019): PREDICT, CERTIFY, Clopper-Pearson bounds.

``bounds`` holds the statistics (scipy, vectorized); ``smoothing`` holds the batched Monte-Carlo engine
and the per-example driver with sharding and resume. Nothing here imports typer or rich.
"""

from robcli.certify.bounds import (
    ABSTAIN,
    certified_radius,
    cp_lower,
    min_samples,
    predict_from_counts,
)

__all__ = ["ABSTAIN", "certified_radius", "cp_lower", "min_samples", "predict_from_counts"]
