"""Model names checked against timm's registry before any work, with the names that were meant."""
import difflib

import timm
from timm.models import split_model_name_tag

# Names timm resolves from elsewhere (the Hub, a local folder) rather than from its registry.
_EXTERNAL_PREFIXES = ('hf-hub:', 'hf_hub:', 'local-dir:')


def check_model_name(name: str) -> None:
    """Raise ValueError when timm cannot create ``name`` (``<model>`` or ``<model>.<tag>``), naming
    the close registered models or the model's tags."""
    if name.startswith(_EXTERNAL_PREFIXES):
        return
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ''
        raise ValueError(f'Unknown model {arch!r}.{hint} `timm-frelu models` lists the FReLU zoo\'s models, '
                         'timm.list_models() all of timm\'s.')
    # Every tag of the model's pretrained configs, with weights or without (timm creates both).
    tags = [n.partition('.')[2] for n in timm.list_models(arch, include_tags=True)]
    if tag and tag not in tags:
        raise ValueError(f'{arch} has no tag {tag!r}; its tags: {", ".join(tags) or "none"} '
                         f'(or give {arch} alone for the default).')
