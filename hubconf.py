"""torch.hub entrypoints: one per registered model, as timm's own hubconf.py gives them.

    model = torch.hub.load('<this repository>', 'resnet20_frelu', pretrained=True)      # from GitHub
    model = torch.hub.load('path/to/timm-frelu', 'resnet20_frelu', source='local', pretrained=True)

``pretrained=True`` loads the name's default weights (its longest-trained ones); a name with a
tag picks others, as in timm: ``torch.hub.load(..., 'resnet20_frelu', pretrained_cfg='cifar10')``.
"""
dependencies = ['torch', 'timm', 'safetensors', 'huggingface_hub']

import timm_frelu.models.resnet as _resnet  # noqa: E402  (importing it registers the models with timm)

globals().update({f'{arch}_{act}': getattr(_resnet, f'{arch}_{act}') for arch in _resnet.ARCHS for act in _resnet.ACTS})
