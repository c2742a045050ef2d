"""The Parquet table schemas (the contract in the README's "Tables" section). One place for every table kind.

Each kind lists its required columns with their Arrow type names. Extra columns are allowed and kept.
Columns listed in ``FRACTIONS`` must lie in [0, 1] (accuracies are fractions, never percent).
"""

from __future__ import annotations

SCHEMA_VERSION = "1"

# type names: int64, float64, bool, string
SCHEMAS: dict[str, dict[str, str]] = {
    "attack": {
        "idx": "int64",
        "label": "int64",
        "eps": "float64",
        "norm": "string",
        "attack": "string",
        "clean_pred": "int64",
        "adv_pred": "int64",
        "correct": "bool",
        "robust": "bool",
        "clean_margin": "float64",
        "adv_margin": "float64",
        "pert_norm": "float64",
    },
    "certify": {
        "idx": "int64",
        "label": "int64",
        "predict": "int64",
        "radius": "float64",
        "correct": "bool",
        "time": "float64",
        "sigma": "float64",
        "N0": "int64",
        "N": "int64",
        "alpha": "float64",
        "nA": "int64",
        "pA_lower": "float64",
    },
    "partition": {
        "idx": "int64",
        "label": "int64",
        "split": "string",
    },
    "compose": {
        "selector": "string",
        "threshold": "float64",
        "eps": "float64",
        "nat_acc": "float64",
        "robust_acc": "float64",
        "robust_selection": "float64",
        "selected_robust_acc": "float64",
        "robust_inaccuracy": "float64",
    },
    "train_log": {
        "epoch": "int64",
        "lr": "float64",
        "loss": "float64",
        "train_nat_acc": "float64",
        "val_nat_acc": "float64",
        "val_robust_acc": "float64",
        "val_robust_inaccuracy": "float64",
        "seconds": "float64",
    },
}

# Optional columns: absent in older tables and in other writers' tables; checked (and typed) where present.
# "list<float64>": each value a list of finite floats. Sequential certification (certify --sequential) writes
# these; every consumer of a certify table reads the required columns above and ignores them.
OPTIONAL: dict[str, dict[str, str]] = {
    "certify": {
        "method": "string",  # "sequential" (certify --sequential); absent: fixed-N CERTIFY / PREDICT
        "against": "string",  # "prediction" (Cohen's selection) or "label" (certified accuracy of the labels)
        "cap": "int64",  # the cap on estimation samples (--N)
        "n_used": "int64",  # selection + estimation samples drawn for the row
        "certified_radii": "list<float64>",  # the target radii certified (the adaptive mode: [radius] or [])
        "stop": "string",  # why the example stopped (decided, cap, unreachable, tolerance, hopeless)
    },
}
AGAINST_VALUES = ("prediction", "label")

FRACTIONS: dict[str, tuple[str, ...]] = {
    "compose": ("nat_acc", "robust_acc", "robust_selection", "selected_robust_acc", "robust_inaccuracy"),
    "train_log": ("train_nat_acc", "val_nat_acc", "val_robust_acc", "val_robust_inaccuracy"),
    "certify": ("pA_lower",),
}

# columns that may legitimately hold NaN (e.g. an accuracy among zero selected examples). An int64 column
# listed here may hold nulls (pandas ``Int64``, Parquet null); robcli's own tables never write them, so readers
# of those tables keep seeing plain int64. certify's ``nA`` is empty only in tables imported from a log that does
# not record it (Cohen et al.'s format): such rows must carry ``imported = True`` (IMPORTED_COLUMN).
NULLABLE: dict[str, tuple[str, ...]] = {
    "compose": ("selected_robust_acc", "threshold"),
    "train_log": ("val_robust_acc", "val_robust_inaccuracy"),
    "certify": ("pA_lower", "nA"),
    "attack": ("adv_margin", "clean_margin"),
}

# nullable columns that may be empty only on rows marked imported (``IMPORTED_COLUMN`` true)
IMPORTED_ONLY_NULLS: dict[str, tuple[str, ...]] = {"certify": ("nA",)}
IMPORTED_COLUMN = "imported"

PARTITION_SPLITS = ("robust_accurate", "robust_inaccurate", "nonrobust_accurate", "nonrobust_inaccurate")

# What a certify table's radii certify: column (and config key) ``certified_model``, written by every mixture
# certificate (`certify --method mix-...`). Tables without it are Cohen's CERTIFY of a model (the smoothed classifier of the
# run that the table's metadata names). The names fit the mixture methods' later spellings: mix-lipschitz and
# mix-local-estimate -> "mixture", mix-smoothed-h and mix-lipschitz-rs -> "mixture-with-smoothed-h".
CERTIFIED_MIXTURE = "mixture"
CERTIFIED_MIXTURE_SMOOTHED_H = "mixture-with-smoothed-h"
CERTIFIED_MODELS: dict[str, str] = {
    CERTIFIED_MIXTURE: ("the fixed-alpha mixture log((1-a) softmax(s_g g) + a softmax(s_h h)) of the deterministic "
                        "robust model h, for any core model g: what a mixture run directory (compose --mix) computes"),
    CERTIFIED_MIXTURE_SMOOTHED_H: ("the mixture whose robust member is the Gaussian-smoothed hard classifier of h, for "
                                   "any core model g: not what a mixture run directory computes (its forward mixes "
                                   "the deterministic softmax(s_h h))"),
}
# radius_kind values of tables written before the certified_model column (read for old tables)
RADIUS_KIND_CERTIFIES: dict[str, str] = {
    "smoothing-rs": CERTIFIED_MIXTURE_SMOOTHED_H,
    "lipschitz-rs": CERTIFIED_MIXTURE_SMOOTHED_H,
    "lipschitz-given": CERTIFIED_MIXTURE,
}
