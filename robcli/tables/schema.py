"""The Parquet table schemas (the contract in DESIGN.md). One place for every table kind.

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
