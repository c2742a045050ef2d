"""Data set registry and loaders. Every loader returns pixels in [0, 1] and integer labels."""

from robcli.data.registry import DATASETS, DataInfo, SplitData, get_info, list_datasets, load_split, val_rows

__all__ = ["DATASETS", "DataInfo", "SplitData", "get_info", "list_datasets", "load_split", "val_rows"]
