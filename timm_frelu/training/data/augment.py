"""Batch augmentations as tensor ops, with randomness drawn from an explicit generator.

Random parameters are drawn on the CPU from the caller's ``torch.Generator`` and applied on the
batch's device, so a seed gives the same augmentations on any device.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by ``padding`` pixels and crop it back at a random offset, as
    torchvision's ``RandomCrop(size, padding)`` does one image at a time."""
    if padding <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_hflip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = (torch.rand(images.shape[0], generator=generator) < p).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square (clipped at the border) at a random centre of each image
    (DeVries and Taylor, 2017). Applied after normalisation, zero is the dataset mean."""
    if size <= 0:
        return images
    n, _, h, w = images.shape
    cy = torch.randint(0, h, (n,), generator=generator).to(images.device)
    cx = torch.randint(0, w, (n,), generator=generator).to(images.device)
    ys = torch.arange(h, device=images.device)[None, :]
    xs = torch.arange(w, device=images.device)[None, :]
    in_rows = (ys >= (cy - size // 2)[:, None]) & (ys < (cy - size // 2 + size)[:, None])
    in_cols = (xs >= (cx - size // 2)[:, None]) & (xs < (cx - size // 2 + size)[:, None])
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return images.masked_fill(mask, 0)


def create_policy_augment(name: Optional[str], mean: tuple) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """A per-image augmentation policy on uint8 CHW tensors, by timm's ``--aa`` names:
    ``rand-*`` (timm's RandAugment), ``augmix-*`` (timm's AugMix), ``trivial``
    (torchvision's TrivialAugmentWide, which timm does not have), or a timm AutoAugment policy
    (``v0``, ``original``, ...)."""
    if not name:
        return None
    if name == 'trivial':
        from torchvision.transforms.v2 import TrivialAugmentWide
        return TrivialAugmentWide()
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
    from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
    hparams = dict(translate_const=int(32 * 0.45), img_mean=tuple(round(255 * m) for m in mean))
    if name.startswith('rand'):
        pil_policy = rand_augment_transform(name, hparams)
    elif name.startswith('augmix'):
        pil_policy = augment_and_mix_transform(name, hparams)
    else:
        pil_policy = auto_augment_transform(name, hparams)
    return lambda image: pil_to_tensor(pil_policy(to_pil_image(image)))
