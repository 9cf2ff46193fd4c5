"""Datasets as uint8 image tensors, decoded once and cached.

Dataset names follow timm's ``--dataset`` convention where one exists:

* ``torch/cifar10``, ``torch/cifar100``: torchvision's CIFAR in ``data_dir`` (its standard
  layout), downloaded there with ``download=True`` on a machine with internet.
* ``shared/cifar10-jpeg``, ``shared/cifar10-lossless``: the offline copies in the shared data
  folder (the full CIFAR-10 as lossy JPEG, and 4,000 train / 1,000 test original images).
* ``folder``: an image folder ``data_dir/<split>/<class>/<image>``; classes are the sorted
  sub-folder names, so CIFAR folders named by class come out in the official label order.

A split may take a slice of itself, in timm's (TFDS) split syntax: ``train[:45000]`` is the first
45,000 training images in the dataset's order, ``train[45000:]`` the rest, ``train[:90%]`` the
first 90%. That is how a validation set is held out of the training data.
"""
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file
from torchvision.transforms.v2.functional import resize

from .errors import DataError
from .shared import SHARED_ARCHIVES, cache_dir, shared_data_dir, unpacked_archive, verified_archive

DATA_DIR_ENV = 'TIMM_FRELU_DATA'
TORCHVISION_DATASETS = ('torch/cifar10', 'torch/cifar100')
SHARED_DATASETS = tuple(f'shared/{name}' for name in SHARED_ARCHIVES)
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')


@dataclass
class ImageSet:
    """One split of a dataset, held in memory."""
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)
    classes: List[str]
    source: Dict[str, Any] = field(default_factory=dict)  # what was read: dataset, split, path, sha256s

    def __len__(self) -> int:
        return self.labels.numel()

    def content_sha256(self) -> str:
        """SHA256 of the decoded pixels and labels: the same number for the same data, however stored."""
        digest = hashlib.sha256()
        digest.update(self.images.contiguous().numpy().tobytes())
        digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or 'data')


_SLICED_SPLIT = re.compile(r'^(?P<name>[^\[\]]+)\[(?P<start>-?\d*%?):(?P<stop>-?\d*%?)\]$')


def parse_split(split: str) -> Tuple[str, Optional[slice]]:
    """``'train[:45000]'`` -> ``('train', slice(None, 45000))``; a bare name gets no slice. Bounds
    are image counts, or percentages of the split with a ``%`` sign."""
    if '[' not in split:
        return split, None
    match = _SLICED_SPLIT.match(split)
    if not match:
        raise DataError(
            f'Cannot read the split {split!r}. Write a split name, optionally with a slice in timm\'s '
            f'split syntax: train[:45000], train[45000:], train[:90%].')
    return match['name'], slice(match['start'] or None, match['stop'] or None)


def _slice_index(bound: Optional[str], size: int) -> Optional[int]:
    if bound is None:
        return None
    return round(size * int(bound[:-1]) / 100) if bound.endswith('%') else int(bound)


def _take_slice(image_set: ImageSet, split: str, bounds: slice) -> ImageSet:
    size = len(image_set)
    index = slice(_slice_index(bounds.start, size), _slice_index(bounds.stop, size))
    images, labels = image_set.images[index], image_set.labels[index]
    if labels.numel() == 0:
        raise DataError(f'The split {split!r} selects no images of the {size} there are.')
    return ImageSet(images.contiguous(), labels.contiguous(), image_set.classes, image_set.source)


def load_split(
        dataset: str,
        split: str,
        data_dir: Optional[str] = None,
        download: bool = False,
        img_size: Optional[int] = None,
) -> ImageSet:
    """Load ``split`` ('train' or 'test', or any folder name for ``folder``, optionally sliced as
    in ``train[:45000]``) of ``dataset``."""
    full_split = split
    split, bounds = parse_split(full_split)
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if dataset in TORCHVISION_DATASETS:
        image_set = _load_torchvision(dataset, split, data_dir, download)
        if img_size:
            image_set.images = resize(image_set.images, [img_size, img_size], antialias=True)
    elif dataset in SHARED_DATASETS:
        name = dataset.split('/', 1)[1]
        archive, archive_sha256 = verified_archive(name)
        image_set = _load_folder_cached(unpacked_archive(archive, archive_sha256) / split, img_size)
        image_set.source.update(archive=str(archive), archive_sha256=archive_sha256)
    elif dataset == 'folder':
        image_set = _load_folder_cached(data_dir / split, img_size)
    else:
        raise DataError(
            f'Unknown dataset {dataset!r}. Use one of {TORCHVISION_DATASETS + SHARED_DATASETS} or '
            f"'folder' with --data-dir pointing at <dir>/<split>/<class>/ images.")
    if bounds is not None:
        image_set = _take_slice(image_set, full_split, bounds)
    image_set.source.update(dataset=dataset, split=full_split, num_images=len(image_set))
    image_set.source['content_sha256'] = image_set.content_sha256()
    return image_set


def _load_torchvision(dataset: str, split: str, data_dir: Path, download: bool) -> ImageSet:
    from torchvision.datasets import CIFAR10, CIFAR100
    dataset_cls = CIFAR10 if dataset == 'torch/cifar10' else CIFAR100
    if split not in ('train', 'test'):
        raise DataError(f"{dataset} has the splits 'train' and 'test', not {split!r}.")
    try:
        ds = dataset_cls(str(data_dir), train=split == 'train', download=download)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise DataError(
            f'{dataset} was looked for in {data_dir.resolve()} (torchvision layout) and not found or '
            f'corrupt ({err}). Fixes: pass --dataset-download on a machine with internet; point '
            f'--data-dir (or ${DATA_DIR_ENV}) at a folder that holds it; or, offline, use '
            f'--dataset shared/cifar10-jpeg, or --dataset folder with an image folder.') from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return ImageSet(images, labels, list(ds.classes), dict(path=str(data_dir.resolve())))


def _scan_folder(root: Path) -> Tuple[List[str], List[Tuple[Path, int]]]:
    if not root.is_dir():
        folders = sorted(p.name for p in root.parent.iterdir() if p.is_dir()) if root.parent.is_dir() else []
        if folders:  # most likely the data is there and the split name is wrong
            shown = ', '.join(folders[:10]) + (', ...' if len(folders) > 10 else '')
            raise DataError(
                f'No split {root.name!r} in {root.parent.resolve()}, which has the folders {shown}. Pass one of '
                f'those as the split (--split; in training --train-split, --val-split), or set --data-dir to a '
                f'folder laid out as <data-dir>/<split>/<class>/<image>.')
        raise DataError(
            f'No image folder at {root.resolve()}. Expected <data-dir>/<split>/<class>/<image> '
            f'(for example train/cat/0001.png); set --data-dir and the split names to match.')
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    samples = [
        (path, label)
        for label, name in enumerate(classes)
        for path in (root / name).iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not samples:
        raise DataError(f'{root.resolve()} holds no images in class sub-folders ({", ".join(IMAGE_SUFFIXES)}).')
    # File name first: folders whose files are named by their index (as the shared CIFAR
    # copies are) come out in the dataset's original order.
    samples.sort(key=lambda s: (s[0].name, s[1]))
    return classes, samples


def _load_folder_cached(root: Path, img_size: Optional[int]) -> ImageSet:
    classes, samples = _scan_folder(root)
    fingerprint = hashlib.sha256(json.dumps([
        str(root.resolve()), img_size,
        [(str(p.relative_to(root)), label, p.stat().st_size, p.stat().st_mtime_ns) for p, label in samples],
    ]).encode()).hexdigest()
    cache_file = cache_dir() / 'tensors' / f'{fingerprint[:32]}.safetensors'
    source = dict(path=str(root.resolve()))
    if cache_file.is_file():
        try:
            tensors = load_file(cache_file)
            return ImageSet(tensors['images'], tensors['labels'], classes, source)
        except Exception:  # a damaged cache is rebuilt from the images
            cache_file.unlink(missing_ok=True)
    images = torch.stack([_decode(path, img_size) for path, _ in samples])
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f'.tmp{os.getpid()}')
    save_file({'images': images, 'labels': labels}, tmp)
    os.replace(tmp, cache_file)
    return ImageSet(images, labels, classes, source)


def _decode(path: Path, img_size: Optional[int]) -> torch.Tensor:
    try:
        with Image.open(path) as pil_image:
            image = torch.from_numpy(np.array(pil_image.convert('RGB'))).permute(2, 0, 1).contiguous()
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f'Cannot decode {path}: {err}. Remove or replace the file.') from None
    if img_size:
        image = resize(image, [img_size, img_size], antialias=True)
    return image


def check_same_size(image_sets: List[ImageSet]) -> None:
    """Raise a clear error unless every image set has one image size (stacking needs it)."""
    sizes = {tuple(s.images.shape[1:]) for s in image_sets}
    if len(sizes) != 1:
        raise DataError(f'Images differ in size {sorted(sizes)}; pass --img-size to resize them all.')


__all__ = ['ImageSet', 'load_split', 'default_data_dir', 'DataError', 'shared_data_dir',
           'TORCHVISION_DATASETS', 'SHARED_DATASETS', 'check_same_size']
