"""Accuracy and loss of a model over a loader, summed exactly across DDP ranks."""
from collections import OrderedDict
from contextlib import nullcontext
from typing import Dict, Iterable, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F


@torch.no_grad()
def evaluate(
        model: torch.nn.Module,
        loader: Iterable[Tuple[torch.Tensor, torch.Tensor]],
        num_classes: int,
        autocast=nullcontext,
        tta_flip: bool = False,
) -> Dict:
    """Top-1, top-5, mean cross-entropy and per-class top-1 (all in percent, loss raw) and the
    image count. Under DDP every rank passes its shard and gets the totals over all ranks."""
    model.eval()
    device = next(model.parameters()).device
    # Sums, not averages: shards of unequal length must not be weighted equally.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.float64, device=device)
    top5 = torch.zeros((), dtype=torch.float64, device=device)
    class_correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
    class_count = torch.zeros(num_classes, dtype=torch.float64, device=device)
    for images, targets in loader:
        with autocast():
            logits = model(images)
            if tta_flip:
                logits = (logits + model(images.flip(3))) / 2
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction='sum')
        topk = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1 = topk[:, 0] == targets
        top1 += hit1.sum()
        top5 += (topk == targets[:, None]).any(dim=1).sum()
        class_correct.index_add_(0, targets, hit1.double())
        class_count.index_add_(0, targets, torch.ones_like(hit1, dtype=torch.float64))
    totals = torch.stack([loss_sum, top1, top5])
    if dist.is_available() and dist.is_initialized():
        for t in (totals, class_correct, class_count):
            dist.all_reduce(t)
    count = class_count.sum().item()
    if count == 0:
        raise ValueError('The evaluation data is empty.')
    loss_sum, top1, top5 = totals.tolist()
    per_class = (100 * class_correct / class_count.clamp(min=1)).tolist()
    return OrderedDict(
        loss=loss_sum / count, top1=100 * top1 / count, top5=100 * top5 / count,
        count=int(count), per_class_top1=per_class)
