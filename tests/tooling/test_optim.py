"""Which parameters the training command decays, and the learning rate it derives from --lr-base."""
import pytest
import timm

from timm_frelu import FReLU
from timm_frelu.training.optim import weight_decay_param_groups
from timm_frelu.training.train import parse_args, scaled_lr


def _decayed_names(model, exclude):
    groups = weight_decay_param_groups(model, 5e-4, exclude)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in groups if g['weight_decay'] > 0 for p in g['params']}


def test_weight_decay_exclusions():
    model = timm.create_model('resnet20_frelu')
    everything = {n for n, _ in model.named_parameters()}
    assert _decayed_names(model, 'none') == everything
    timm_default = _decayed_names(model, 'norm_bias')
    assert timm_default == {n for n, p in model.named_parameters() if p.ndim > 1}
    assert 'layer1.0.act1.weight' in timm_default and 'layer1.0.act1.bn.weight' not in timm_default
    funnel_kernels = {f'{n}.weight' for n, m in model.named_modules() if isinstance(m, FReLU)}
    assert len(funnel_kernels) == 18 and _decayed_names(model, 'norm_bias_funnel') == timm_default - funnel_kernels
    with pytest.raises(ValueError, match='norm_bias_funnel'):
        weight_decay_param_groups(model, 5e-4, 'bn')


def test_lr_is_scaled_from_lr_base_as_in_timm():
    args = parse_args(['--lr-base', '0.2', '--batch-size', '512'])
    args.world_size = 1
    assert args.lr is None and scaled_lr(args) == pytest.approx(0.4)
    args = parse_args(['--lr-base', '0.2', '--batch-size', '64', '--opt', 'adamw'])
    args.world_size = 1
    assert scaled_lr(args) == pytest.approx(0.1)  # sqrt scaling for adaptive optimizers
    assert parse_args(['--lr', '0.05']).lr == 0.05
