"""The names robcli registers, as plain tuples: for shell completion and messages that must stay quick.

Importing this module imports nothing else (no torch, no numpy): shell completion runs on every TAB press.
Each tuple is a copy of a live registry (:class:`robcli.utils.registry.Registry`) or constant;
``tests/test_completion.py`` checks that they agree and that every registry has its tuple here, so adding a
data set, model, loss, attack or selector without adding its name here fails the tests.
"""

from __future__ import annotations

# robcli.data.registry.list_datasets()
DATASETS = ("cifar10", "cifar100", "digits", "gaussians", "imagefolder", "mnist", "svhn")
# robcli.models.registry.list_models(): the registered architectures (--arch, and --model when not a path)
MODELS = ("mlp", "resnet18", "resnet18_tiny", "resnet50", "small_cnn", "tiny_cnn", "tiny_mlp", "wrn-28-10",
          "wrn-34-10", "wrn_tiny")
# robcli.losses.list_losses(): the LOSSES registry + the routed ones (mixnet; finetune --loss)
LOSSES = ("cra", "dga", "era", "mixnet", "noise", "std", "trades")
# robcli.attacks.ATTACKS (attack --attack, partition --attack), as users type them (mix-a..mix-d: any case)
ATTACKS = ("apgd-ce", "apgd-conf", "apgd-dlr", "apgd-t", "autoattack", "fab-t", "grid", "mix-a", "mix-b", "mix-c",
           "mix-d", "pgd", "square")
# robcli.compose.selectors.list_selectors() (compose --selector; the aliases are accepted but not offered)
SELECTORS = ("ri", "sr", "sr-pointwise")
# robcli.utils.parse.NORMS (--norm)
NORMS = ("Linf", "L2")
# robcli.attacks.aa.AA_VERSIONS (attack --version)
AA_VERSIONS = ("standard", "plus", "rand", "custom")
# robcli.mixing.train.TRAIN_SETTINGS (finetune --loss mixnet --train-attack)
TRAIN_SETTINGS = ("A", "B", "C")
# robcli.compose.export.INNER_ATTACKS (compose --export-inner-attack)
INNER_ATTACKS = ("pgd", "apgd-ce")
# robcli.certify.smoothing.MODES (certify --mode)
CERTIFY_MODES = ("certify", "predict")
# robcli.report.render.FORMATS + the Cohen-format export (report --format)
REPORT_FORMATS = ("markdown", "csv", "latex", "json", "html", "cohen-tsv")
# what `robcli list` lists
LISTS = ("datasets", "models", "losses", "attacks")

__all__ = ["AA_VERSIONS", "ATTACKS", "CERTIFY_MODES", "DATASETS", "INNER_ATTACKS", "LISTS", "LOSSES", "MODELS",
           "NORMS", "REPORT_FORMATS", "SELECTORS", "TRAIN_SETTINGS"]
