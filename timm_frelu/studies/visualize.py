"""Pictures of what a FReLU model learned: its funnel kernels, and its funnel conditions on one image.

* ``kernels.png``: the 3x3 depthwise kernel of the first 16 channels of every FReLU layer.
* ``conditions.png``: for one test image and each FReLU layer, the input x of one channel, its
  funnel condition T(x), where max picks T(x) over x in that channel, and the share of all
  channels in which it does, per pixel. The channel shown is the one whose funnel wins over the
  most even share of pixels, where the spatial condition is doing the most visible work.
"""
from pathlib import Path
from typing import Dict, List, Optional

import torch
from timm.data import resolve_data_config
from timm.models import create_model

from ..layers import FReLU
from ..training.checkpoint import load_weights
from ..training.data import load_split
from .figures import pyplot


def frelu_layers(model: torch.nn.Module) -> Dict[str, FReLU]:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, FReLU)}
    if not layers:
        raise ValueError('This model has no FReLU layers to show.')
    return layers


@torch.no_grad()
def funnel_maps(model: torch.nn.Module, image: torch.Tensor) -> Dict[str, Dict[str, torch.Tensor]]:
    """x and T(x) at every FReLU layer for a normalised (1, C, H, W) image, in eval mode."""
    model.eval()
    captured: Dict[str, Dict[str, torch.Tensor]] = {}
    hooks = [
        module.register_forward_hook(
            lambda m, inputs, output, name=name: captured.__setitem__(
                name, dict(x=inputs[0][0], condition=m.funnel_condition(inputs[0])[0])))
        for name, module in frelu_layers(model).items()
    ]
    try:
        model(image)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def plot_kernels(model: torch.nn.Module, path: Path, channels: int = 16) -> None:
    plt = pyplot()
    layers = frelu_layers(model)
    fig, axes = plt.subplots(len(layers), 1, figsize=(channels * 0.6, len(layers) * 0.75), squeeze=False)
    for ax, (name, layer) in zip(axes[:, 0], layers.items()):
        kernels = layer.weight[:channels, 0].detach().float()
        k = kernels.shape[-1]
        strip = torch.full((k, len(kernels) * (k + 1) - 1), float('nan'))
        for i, kernel in enumerate(kernels):
            strip[:, i * (k + 1):i * (k + 1) + k] = kernel / kernel.abs().max().clamp(min=1e-12)
        ax.imshow(strip.numpy(), cmap='coolwarm', vmin=-1, vmax=1)
        ax.set_ylabel(name, rotation=0, ha='right', va='center', fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle('FReLU depthwise kernels, first channels of each layer (each scaled to its max |w|)', fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)


def plot_conditions(maps: Dict[str, Dict[str, torch.Tensor]], image_u8: torch.Tensor, path: Path, title: str,
                    max_layers: int = 6) -> None:
    """For one image, a column per FReLU layer (at most ``max_layers``, evenly spaced from the
    first to the last): x of one channel, T(x), where T(x) wins, and in what share of channels.
    Landscape, with labels readable where the Hub shows the card."""
    plt = pyplot()
    names = list(maps)
    if len(names) > max_layers:
        names = [names[round(i * (len(names) - 1) / (max_layers - 1))] for i in range(max_layers)]
    rows = ('x (one channel)', 'T(x)', 'T(x) > x', 'share of channels\nwhere T(x) > x')
    fig, axes = plt.subplots(len(rows), len(names) + 1, figsize=(2.2 * (len(names) + 1), 2.2 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].imshow(image_u8.permute(1, 2, 0).numpy())
    axes[0, 0].set_title('input', fontsize=11)
    for ax in axes[1:, 0]:
        ax.axis('off')
    for row, label in enumerate(rows):
        axes[row, 1].set_ylabel(label, fontsize=11)
    for col, name in enumerate(names, start=1):
        m = maps[name]
        funnel_wins = m['condition'] > m['x']
        share = funnel_wins.float().flatten(1).mean(1)
        channel = int((share - 0.5).abs().argmin())  # the channel where the funnel wins about half the time
        panels = (m['x'][channel], m['condition'][channel], funnel_wins[channel].float(), funnel_wins.float().mean(0))
        for row, panel in enumerate(panels):
            axes[row, col].imshow(panel.numpy(), cmap='gray' if row < 2 else 'viridis', vmin=0 if row > 1 else None,
                                  vmax=1 if row > 1 else None)
        axes[0, col].set_title(f'{name}\nchannel {channel}', fontsize=10)
    fig.suptitle(f'What FReLU computes: {title}', fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def show_frelu(
        model_name: str,
        output: Path,
        checkpoint: Optional[str] = None,
        pretrained: bool = False,
        dataset: str = 'shared/cifar10-lossless',
        split: str = 'test',
        image_index: int = 0,
        data_dir: Optional[str] = None,
        num_classes: Optional[int] = None,
) -> List[Path]:
    model = create_model(model_name, pretrained=pretrained, **({'num_classes': num_classes} if num_classes else {}))
    if checkpoint:
        load_weights(model, Path(checkpoint), use_ema=None)
    data = load_split(dataset, split, data_dir)
    image_u8 = data.images[image_index]
    cfg = resolve_data_config({}, model=model)
    mean = torch.tensor(cfg['mean']).view(3, 1, 1)
    std = torch.tensor(cfg['std']).view(3, 1, 1)
    image = ((image_u8.float() / 255 - mean) / std)[None]
    output.mkdir(parents=True, exist_ok=True)
    kernels, conditions = output / 'kernels.png', output / 'conditions.png'
    plot_kernels(model, kernels)
    label = data.classes[int(data.labels[image_index])]
    plot_conditions(funnel_maps(model, image), image_u8, conditions, f'{dataset}/{split}[{image_index}]: {label}')
    return [kernels, conditions]
