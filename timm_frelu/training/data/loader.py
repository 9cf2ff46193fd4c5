"""Batches straight from an in-memory uint8 tensor, augmented on the training device."""
import random
from typing import Iterator, Optional, Sequence, Tuple

import torch

from .augment import create_policy_augment, cutout, random_crop, random_hflip


class TensorLoader:
    """Iterates (images, labels) batches of a uint8 image tensor.

    The whole dataset moves to ``device`` once; each batch is indexed, augmented, converted to
    float and normalised there. Every random choice (order, crops, flips, cutout, policies) comes
    from a generator seeded with ``(seed, epoch)``, so a run is reproducible and a resumed epoch
    repeats exactly. Under DDP each rank takes a strided shard of the same permutation; with
    ``drop_last=False`` shards differ in length by at most one and cover every image once.

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
        batch_size: Images per batch (per rank).
        mean, std: Per-channel normalisation on the [0, 1] scale.
        train: Shuffle and augment (otherwise neither).
        device: Where batches are made.
        seed: Base seed of every random choice.
        crop_padding: Pixels of zero padding for the random crop (0 disables it).
        hflip: Random horizontal flips.
        cutout_size: Side of the Cutout square (0 disables it).
        auto_augment: A per-image policy name (see ``create_policy_augment``), run on the CPU.
        drop_last: Drop the last incomplete batch (default: when training).
        rank, world_size: This process's shard under DDP.
        channels_last: Return batches in channels-last memory format.
    """

    def __init__(
            self,
            images: torch.Tensor,
            labels: torch.Tensor,
            batch_size: int,
            mean: Sequence[float],
            std: Sequence[float],
            train: bool = False,
            device: torch.device = torch.device('cpu'),
            seed: int = 0,
            crop_padding: int = 4,
            hflip: bool = True,
            cutout_size: int = 0,
            auto_augment: Optional[str] = None,
            drop_last: Optional[bool] = None,
            rank: int = 0,
            world_size: int = 1,
            channels_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f'TensorLoader takes uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}.')
        self.cpu_images = images
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.train = train
        self.device = device
        self.seed = seed
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.cutout_size = cutout_size
        self.policy = create_policy_augment(auto_augment, mean) if train else None
        self.drop_last = train if drop_last is None else drop_last
        self.rank = rank
        self.world_size = world_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self, generator: torch.Generator) -> torch.Tensor:
        n = self.labels.numel()
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(range(self.rank, self.labels.numel(), self.world_size))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        index = self._shard(generator)
        for b in range(len(self)):
            batch_index = index[b * self.batch_size:(b + 1) * self.batch_size]
            yield self._make_batch(batch_index, generator), self.labels[batch_index.to(self.device)]

    def _make_batch(self, batch_index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.policy is not None:
            # Policies draw from Python's RNG; seed it from the loader's generator.
            random.seed(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
            torch_state = torch.random.get_rng_state()
            torch.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
            images = torch.stack([self.policy(self.cpu_images[i]) for i in batch_index]).to(self.device)
            torch.random.set_rng_state(torch_state)
        else:
            images = self.images[batch_index.to(self.device)]
        if self.train:
            images = random_crop(images, self.crop_padding, generator)
            if self.hflip:
                images = random_hflip(images, generator)
        x = (images.float() - self.mean) / self.std
        if self.train and self.cutout_size:
            x = cutout(x, self.cutout_size, generator)
        return x.contiguous(memory_format=self.memory_format)
