"""Metrics over predictions: top-k hits, per-class accuracy, confusion matrix, time-reversal pair accuracy."""
from __future__ import annotations

from typing import Optional

import torch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, int]:
    """Number of samples whose label is in the top-k predictions, for each k (k clipped to num classes)."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices  # [B, kmax]
    hits = top == labels.unsqueeze(-1)
    return {k: int(hits[:, :k].any(-1).sum()) for k in ks}


def classification_report(preds: torch.Tensor, labels: torch.Tensor, class_names: list,
                          reversal_pairs: Optional[dict] = None) -> dict:
    """Per-class accuracy, mean class accuracy, confusion matrix [true][pred]; with time-reversal pairs also
    ``family_accuracy`` (right pair) and ``direction_accuracy`` (right class, among samples in the right pair)."""
    num = len(class_names)
    keep = labels >= 0
    preds, labels = preds[keep], labels[keep]
    confusion = torch.zeros(num, num, dtype=torch.long)
    confusion.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    support = confusion.sum(1)
    per_class = {class_names[c]: (confusion[c, c].item() / support[c].item()) if support[c] else None
                 for c in range(num)}
    valid = [v for v in per_class.values() if v is not None]
    report = dict(per_class_accuracy=per_class, mean_class_accuracy=sum(valid) / max(len(valid), 1),
                  confusion_matrix=confusion.tolist())
    if reversal_pairs:
        twin = torch.tensor([int(reversal_pairs.get(str(c), reversal_pairs.get(c, c))) for c in range(num)])
        in_pair = (preds == labels) | (preds == twin[labels])
        report["family_accuracy"] = in_pair.float().mean().item() if len(labels) else None
        report["direction_accuracy"] = ((preds == labels) & in_pair).sum().item() / max(int(in_pair.sum()), 1)
    return report
