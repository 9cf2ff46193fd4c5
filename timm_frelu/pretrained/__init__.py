"""The zoo's published weights, in one place: where their folders live, the manifest that lists
them (and from which the models' pretrained configs are made), lookup, download and SHA256 checks.

A published folder ``<model>.<tag>/`` holds ``model.safetensors``, ``config.json``,
``results.json`` (the weights' SHA256 and their evaluations), ``recipe.yaml``, ``summary.csv`` and
the model card. Such folders live in ``checkpoints/`` of a source checkout (or wherever
``$TIMM_FRELU_CHECKPOINTS`` points) and in the Hub repos ``timm-frelu/<model>.<tag>``. The
manifest, ``manifest.json`` in this package, is made from those folders and travels with every
install, so a wheel knows which weights exist, what they scored and what their files must hash to.
"""
from .manifest import (MANIFEST_FILE, WEIGHTS_CFG_FIELDS, PublishedWeights, find_weights, load_manifest,
                       published_weights)
from .names import (CHECKPOINTS_ENV, HF_HUB_ORG, RESULTS_FILENAME, SOURCE_CHECKOUT, WEIGHTS_FILENAME, ZooName,
                    checkpoints_dir, hub_repo_id, published_sha256, shipped_weights, tag_dataset)
from .weights import PretrainedWeightsError, WeightsNotFound, resolve_weights, verify_weights

__all__ = [
    'CHECKPOINTS_ENV', 'HF_HUB_ORG', 'MANIFEST_FILE', 'RESULTS_FILENAME', 'SOURCE_CHECKOUT', 'WEIGHTS_FILENAME',
    'ZooName', 'PretrainedWeightsError',
    'PublishedWeights', 'WEIGHTS_CFG_FIELDS', 'WeightsNotFound', 'checkpoints_dir', 'find_weights',
    'hub_repo_id', 'load_manifest', 'published_sha256', 'published_weights', 'resolve_weights', 'shipped_weights',
    'tag_dataset', 'verify_weights',
]
