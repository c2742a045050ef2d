"""What a finished training run's log says about the model: a class it never predicts on val (recall 0).

For a robust model (TRADES, ERA, DGA, CRA) that may be the ERA paper's Fig. 1 phenomenon, the robust decision
boundary swallowing a small class; for any other loss it is a training failure.
"""

from __future__ import annotations

ROBUST_LOSSES = ("trades", "era", "dga", "cra")  # the Fig. 1 phenomenon: a robust boundary may swallow a class


def zero_recall_warning(result, loss: str) -> tuple[str, bool] | None:
    """``(message, robust)`` when the saved best or last model of ``result`` (a
    :class:`robcli.train.loop.FinetuneResult`) never predicts some class on val, else None; ``robust``: the loss
    is a robust one (the message then points to the Fig. 1 check) rather than a training failure."""
    names = list(result.card.get("class_names") or [])
    hits = []
    for which, epoch in (("model.safetensors (best", result.best_epoch), ("last.safetensors (last", None)):
        rows = result.log if epoch is None else result.log[result.log["epoch"] == epoch]
        if rows.empty or "val_zero_recall" not in rows.columns:
            continue
        row = rows.iloc[-1]
        zero = [int(c) for c in str(row["val_zero_recall"] or "").split(",") if c.strip()]
        if zero:
            cls = ", ".join(f"{names[c]!r} ({c})" if c < len(names) else str(c) for c in zero)
            hits.append(f"{which} epoch {int(row['epoch'])}) never predicts class {cls} on val")
    if not hits:
        return None
    what = "; ".join(dict.fromkeys(hits))
    if loss in ROBUST_LOSSES:
        return (f"WARNING: {what} (recall 0). For a robust model ({loss}) this may be the ERA paper's Fig. 1 "
                "phenomenon: the robust decision boundary swallows a small class, whose points become robust "
                "but misclassified (robust inaccuracy). Check with `robcli attack` then `robcli partition` "
                "(split robust_inaccurate), and compare with the standard model; ERA (--loss era) targets it."), True
    return (f"WARNING: {what} (recall 0). For a {loss} model this is a training failure, not a trade-off: "
            "train longer or with smaller batches (--epochs, --batch, --lr; the data set's recommended "
            "settings apply where you give no flag), or try another --seed."), False
