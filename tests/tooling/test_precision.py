"""Which precision training runs in: --amp, --amp-if-native and what the run records of it."""
import pytest
import torch

from timm_frelu.training.train import autocast_dtype, check_args, computes_natively, precision_record, training_args

CPU = torch.device('cpu')


def _cpu_has_bf16_instructions() -> bool:
    with open('/proc/cpuinfo') as f:
        flags = next(line for line in f if line.startswith('flags')).split()
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def test_amp_autocasts_to_bf16_and_no_flag_stays_fp32():
    assert autocast_dtype(training_args(amp=True), CPU) == torch.bfloat16
    assert autocast_dtype(training_args(), CPU) is None


def test_amp_if_native_follows_the_cpu():
    native = _cpu_has_bf16_instructions() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert computes_natively(CPU, torch.bfloat16) == native
    assert autocast_dtype(training_args(amp_if_native=True), CPU) == (torch.bfloat16 if native else None)


def test_the_cpu_recipes_default_to_amp_if_native():
    from timm_frelu.training.recipes import recipes
    cpu_recipes = [args for path, _, args in recipes() if path.startswith('cpu/') and '/tuned' not in path]
    assert cpu_recipes and all(args['amp_if_native'] for args in cpu_recipes)


def test_fp16_autocast_on_the_cpu_is_refused_before_any_work():
    with pytest.raises(ValueError, match='--amp-dtype float16 is not supported on the CPU: use --amp-dtype bfloat16'):
        check_args(training_args(amp=True, amp_dtype='float16', device='cpu'))


def test_a_run_records_each_stretch_of_precision():
    first = precision_record({}, 0, 'bfloat16 autocast')
    assert first == dict(precision='bfloat16 autocast', precision_history=[dict(from_epoch=0, precision='bfloat16 autocast')])
    # Resumed in the same precision: one stretch still.
    assert precision_record(first, 5, 'bfloat16 autocast') == first
    # Resumed at epoch 12 on a machine without native bf16.
    mixed = precision_record(first, 12, 'float32')
    assert mixed['precision'] == 'bfloat16 autocast from epoch 0 to 11, float32 from epoch 12'
    # Resumed again at epoch 8 (an older last checkpoint): the stretches after it are dropped.
    assert precision_record(mixed, 8, 'float32')['precision_history'] == [
        dict(from_epoch=0, precision='bfloat16 autocast'), dict(from_epoch=8, precision='float32')]
