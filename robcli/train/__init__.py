"""Training: the finetune loop, its configuration and augmentation (BatchNorm handling: :mod:`robcli.models.bn`)."""
