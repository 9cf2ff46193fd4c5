"""Makes ``'frelu'`` a name that timm's activation factory knows.

timm has no public API for registering activations: ``get_act_layer(name)`` looks names up in
module-level dicts of ``timm.layers.create_act``. ``_ACT_LAYER_DEFAULT`` is the table it always
falls back to (the ``_ACT_LAYER_ME`` table only shadows names it already holds), so adding our
entry there makes ``get_act_layer('frelu')``, ``create_act_layer('frelu', ...)`` and every
model's ``act_layer='frelu'`` resolve to :func:`create_frelu`.

Because the tables are private, a timm release may rename or move them. We then fail at import
with a message that names the fix, instead of a ``KeyError: 'frelu'`` far away in a model
constructor; ``tests/library/test_act_factory.py`` checks the hook end to end.
"""
from timm.layers import create_act

from .frelu import create_frelu

__all__ = ['ACT_NAME', 'register_frelu_activation']

ACT_NAME = 'frelu'


def register_frelu_activation() -> None:
    """Add ``'frelu'`` to timm's default activation table (idempotent)."""
    table = getattr(create_act, '_ACT_LAYER_DEFAULT', None)
    if not isinstance(table, dict):
        import timm
        raise ImportError(
            f'timm_frelu cannot register the "{ACT_NAME}" activation: timm {timm.__version__} has no '
            f'dict timm.layers.create_act._ACT_LAYER_DEFAULT. Install a timm version this release '
            f'supports (see timm_frelu\'s pyproject.toml), or update timm_frelu/layers/act_factory.py.')
    table[ACT_NAME] = create_frelu
