"""Training: the finetune loop, its configuration, augmentation and BatchNorm handling.

Kept import-light: ``robcli.losses`` imports :mod:`robcli.train.bn` from here.
"""
