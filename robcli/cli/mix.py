"""The removed `robcli mix` group: every `robcli mix ...` is refused in one line naming the six verbs' spelling.

The work lives in the six verbs: compose --mix/--mix-sweep, finetune --loss mixnet, attack --attack mix-a..d,
certify --method mix-....
"""

from __future__ import annotations

import typer

from robcli.cli.common import handle_errors

# `robcli mix SUB` -> the spelling that does it now
NEW_SPELLING = {
    "build": "robcli compose --mix A --core MODEL --robust MODEL --export RUN",
    "sweep": "robcli compose --mix-sweep --core MODEL --robust MODEL --mix-grid A ... -d DATASET --eps EPS --out T.parquet",
    "train": "robcli finetune --loss mixnet --core MODEL --robust MODEL -d DATASET --eps EPS --out RUN",
    "attack": "robcli attack --attack mix-a|mix-b|mix-c|mix-d --model MIXRUN ...",
    "certify": "robcli certify --method mix-lipschitz|mix-smoothed-h|mix-lipschitz-rs|mix-local-estimate --model MIXRUN ...",
}


@handle_errors
def removed(ctx: typer.Context) -> None:
    """Removed: use compose --mix / --mix-sweep, finetune --loss mixnet, attack --attack mix-*, certify --method mix-*."""
    from robcli.errors import UsageError

    sub = next((a for a in ctx.args if not a.startswith("-")), None)
    if sub in NEW_SPELLING:
        raise UsageError(f"robcli mix {sub} is gone: use {NEW_SPELLING[sub]}")
    raise UsageError("robcli mix is gone: mixtures are built with robcli compose --mix (sweep: --mix-sweep), trained "
                     "with robcli finetune --loss mixnet, attacked with robcli attack --attack mix-a..d and certified "
                     "with robcli certify --method mix-...")
