import shutil

import pytest
import timm
import torch
from conftest import make_image_folder

from timm_frelu.training.data import CIFAR10_MEAN, CIFAR10_STD, DataError, TensorLoader, load_split
from timm_frelu.training.data.shared import SHARED_DATA_ENV, cache_dir, move_into_place, shared_data_dir

CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def test_shared_lossless_subset_is_verified_and_in_official_order():
    test = load_split('shared/cifar10-lossless', 'test')
    assert test.images.shape == (1000, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.classes == CIFAR10_CLASSES
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # from the data README
    assert len(test.source['archive_sha256']) == 64 and test.source['num_images'] == 1000
    assert test.source['content_sha256'] == load_split('shared/cifar10-lossless', 'test').source['content_sha256']


def test_corrupt_archive_is_a_clear_error(tmp_path, monkeypatch):
    for name in ('SHA256SUMS', 'cifar10-lossless-subset.tar.xz'):
        shutil.copy(shared_data_dir() / name, tmp_path / name)
    archive = tmp_path / 'cifar10-lossless-subset.tar.xz'
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    with pytest.raises(DataError, match='is corrupt: its SHA256 is'):
        load_split('shared/cifar10-lossless', 'test')


def test_an_unpack_that_loses_the_race_to_another_worker_keeps_the_winners_copy(tmp_path):
    target = tmp_path / 'cifar10-jpeg-q75-0123456789ab'
    (target / 'train').mkdir(parents=True)
    (target / 'train' / 'winner.txt').write_text('complete')
    late = tmp_path / '.unpack-late'
    (late / 'train').mkdir(parents=True)
    move_into_place(late, target)
    assert (target / 'train' / 'winner.txt').read_text() == 'complete'
    first = tmp_path / '.unpack-first'
    first.mkdir()
    move_into_place(first, tmp_path / 'fresh')
    assert (tmp_path / 'fresh').is_dir() and not first.exists()


def test_missing_shared_data_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    with pytest.raises(DataError, match=f'looked for at .* Set {SHARED_DATA_ENV}'):
        load_split('shared/cifar10-jpeg', 'train')


def test_missing_torchvision_cifar_names_the_fixes(tmp_path):
    with pytest.raises(DataError) as info:
        load_split('torch/cifar100', 'train', data_dir=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message
    assert '--dataset-download' in message and '--data-dir' in message and 'TIMM_FRELU_DATA' in message


def test_unknown_dataset_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match='Unknown dataset'):
        load_split('cifar11', 'train')
    with pytest.raises(DataError, match=r'No image folder at .*<data-dir>/<split>/<class>'):
        load_split('folder', 'train', data_dir=str(tmp_path))


def test_a_split_that_is_not_there_names_the_ones_that_are(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=1)
    with pytest.raises(DataError, match=r"No split 'val' in .*, which has the folders test, train\. Pass one of those"):
        load_split('folder', 'val', data_dir=str(tmp_path))


def test_undecodable_image_is_named(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=2, splits=('train',))
    (tmp_path / 'train' / 'class_000' / 'broken.png').write_bytes(b'not a png')
    with pytest.raises(DataError, match='broken.png'):
        load_split('folder', 'train', data_dir=str(tmp_path))


def test_cifar100_shaped_image_folder_feeds_the_cifar100_models(tmp_path):
    make_image_folder(tmp_path, num_classes=100, per_class=1, splits=('test',))
    test = load_split('folder', 'test', data_dir=str(tmp_path))
    assert test.classes == [f'class_{c:03d}' for c in range(100)]
    assert test.labels.tolist() == list(range(100))
    model = timm.create_model('resnet20_frelu.cifar100').eval()
    cfg = model.pretrained_cfg
    x, _ = next(iter(TensorLoader(test.images, test.labels, 100, cfg['mean'], cfg['std'])))
    assert model(x).shape == (100, 100)


def test_decoded_tensors_are_cached_and_a_damaged_cache_is_rebuilt(tmp_path):
    make_image_folder(tmp_path, num_classes=3, per_class=4, splits=('train',))
    first = load_split('folder', 'train', data_dir=str(tmp_path))
    cache_files = list((cache_dir() / 'tensors').glob('*.safetensors'))
    assert cache_files
    for f in cache_files:
        f.write_bytes(b'damaged')
    again = load_split('folder', 'train', data_dir=str(tmp_path))
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)


def test_img_size_resizes(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=2, size=40, splits=('train',))
    assert load_split('folder', 'train', data_dir=str(tmp_path), img_size=32).images.shape[-2:] == (32, 32)


def _loader(images, labels, **kwargs):
    return TensorLoader(images, labels, 16, CIFAR10_MEAN, CIFAR10_STD, **kwargs)


@pytest.fixture(scope='module')
def small_set():
    data = load_split('shared/cifar10-lossless', 'test')
    return data.images[:100], data.labels[:100]


def test_eval_batches_are_normalised_originals(small_set):
    images, labels = small_set
    x, y = next(iter(_loader(images, labels)))
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(x, (images[:16] / 255 - mean) / std, atol=1e-5)
    assert torch.equal(y, labels[:16])


def test_training_batches_are_deterministic_per_seed_and_epoch(small_set):
    images, labels = small_set
    first = [b[0] for b in _loader(images, labels, train=True, seed=3, cutout_size=8)]
    again = [b[0] for b in _loader(images, labels, train=True, seed=3, cutout_size=8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other_epoch = _loader(images, labels, train=True, seed=3, cutout_size=8)
    other_epoch.set_epoch(1)
    assert not torch.equal(first[0], next(iter(other_epoch))[0])


def test_random_crop_is_a_window_of_the_zero_padded_image(small_set):
    images, labels = small_set
    loader = TensorLoader(images, labels, 100, (0, 0, 0), (1 / 255,) * 3, train=True, hflip=False, seed=1)
    crops = next(iter(loader))[0].round().to(torch.uint8)
    # The loader shuffles, so look for each crop among all windows of all padded images.
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1)  # (N, C, 9, 9, 32, 32)
    for crop in crops[:10]:
        match = (windows == crop[None, :, None, None]).flatten(4).all(-1).all(1)
        assert match.any()
    assert not torch.equal(crops[:10], images[:10])


def test_cutout_zeroes_a_square(small_set):
    images, labels = small_set
    loader = _loader(images, labels, train=True, crop_padding=0, hflip=False, cutout_size=8)
    x = next(iter(loader))[0]
    zero_pixels = (x == 0).all(dim=1).flatten(1).sum(1)
    assert ((zero_pixels >= 16) & (zero_pixels <= 64)).all()


def test_ddp_shards_cover_every_image_once(small_set):
    images, labels = small_set
    seen = []
    for rank in range(3):
        loader = TensorLoader(images, torch.arange(100), 7, CIFAR10_MEAN, CIFAR10_STD, rank=rank, world_size=3)
        seen += [i for _, y in loader for i in y.tolist()]
    assert sorted(seen) == list(range(100))


def test_policies_run_and_stay_uint8_sized(small_set):
    images, labels = small_set
    plain, _ = next(iter(_loader(images, labels, train=True)))
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) * 255 for v in (CIFAR10_MEAN, CIFAR10_STD))
    for policy in ('rand-m9-mstd0.5', 'trivial'):
        loader = _loader(images, labels, train=True, auto_augment=policy)
        assert loader.policy is not None, policy
        x, _ = next(iter(loader))
        assert x.shape == (16, 3, 32, 32) and torch.isfinite(x).all()
        # The policy works on the uint8 images: un-normalised, every value is a whole number in 0..255.
        pixels = x * std + mean
        assert (pixels - pixels.round()).abs().max() < 1e-3 and pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
        # And it did something: the same seed without it gives other batches.
        assert not torch.equal(x, plain), policy


def test_a_split_can_take_a_slice_of_itself_to_hold_out_validation_images():
    whole = load_split('shared/cifar10-lossless', 'train')
    head, tail = load_split('shared/cifar10-lossless', 'train[:3600]'), load_split('shared/cifar10-lossless', 'train[90%:]')
    assert (len(head), len(tail)) == (3600, 400)
    assert torch.equal(torch.cat([head.images, tail.images]), whole.images)
    assert torch.equal(torch.cat([head.labels, tail.labels]), whole.labels)
    assert tail.source['split'] == 'train[90%:]' and tail.source['content_sha256'] != whole.source['content_sha256']
    with pytest.raises(DataError, match=r'train\[:45000\]'):
        load_split('shared/cifar10-lossless', 'train[:half]')
    with pytest.raises(DataError, match='selects no images'):
        load_split('shared/cifar10-lossless', 'train[5000:]')
