"""Export a training run into a published checkpoint folder ``checkpoints/<name>.<tag>/``:

* ``model.safetensors``: the weights we stand behind, fp16 by default (half the size; the
  evaluation below is of that file), the EMA weights when the run kept them, no optimizer state;
* ``config.json``: timm's format, read by ``local-dir:`` and ``hf-hub:`` names;
* ``results.json``: the SHA256 of the weights and the eval command's results on that file;
* ``recipe.yaml`` and ``summary.csv``: how it was trained, epoch by epoch;
* ``README.md``: the model card, generated from all of the above (and ``frelu.png``, what the
  FReLU layers learned, for FReLU models).

The folder is assembled beside its final place and renamed into it, so an existing folder is
only replaced by a complete new one.
"""
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import yaml
from safetensors.torch import save_file
from timm.models import create_model
from timm.models._hub import save_config_for_hf

from ..errors import TimmFreluError
from ..fileio import file_sha256, write_json_atomic
from ..models.registry import check_model_name
from ..pretrained import RESULTS_FILENAME, WEIGHTS_CFG_FIELDS, WEIGHTS_FILENAME, ZooName, checkpoints_dir, tag_dataset
from ..pretrained.datasets import CIFAR_NUM_CLASSES
from ..studies.figures import plot_learning_curve
from ..training.checkpoint import CheckpointError, read_checkpoint
from ..training.data import DataError
from ..training.run_folder import ARGS_FILE, BEST_CHECKPOINT, LAST_CHECKPOINT, SUMMARY_FILE, read_summary
from ..training.validate import validate, validation_args
from .card import LEARNING_CURVE_FILENAME, render_card
from .manifest import build_manifest, weights_entry, write_manifest
from .provenance import portable_args, portable_source

DEFAULT_EVAL_DATASETS = ('shared/cifar10-jpeg', 'shared/cifar10-lossless')
DTYPES = {'float16': torch.float16, 'float32': torch.float32, 'bfloat16': torch.bfloat16}


class PublishError(TimmFreluError, RuntimeError):
    pass


def _run_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    """The checkpoint of a run folder to publish: ``last``/``best`` of a training run, or the
    weights file of a run that kept only its weights (as the GPU zoo job returns them)."""
    wanted = run_dir / (BEST_CHECKPOINT if checkpoint == 'best' else LAST_CHECKPOINT)
    if not wanted.is_file() and (run_dir / WEIGHTS_FILENAME).is_file():
        return run_dir / WEIGHTS_FILENAME
    return wanted


def publish(
        source: Path,
        name_tag: str,
        output_root: Optional[Path] = None,
        checkpoint: str = 'last',
        weights: str = 'auto',
        dtype: str = 'float16',
        eval_datasets: Sequence[str] = DEFAULT_EVAL_DATASETS,
        data_dir: Optional[str] = None,
        figure: bool = True,
        card: bool = True,
) -> Path:
    """Export ``source`` (a run folder, or a checkpoint file in one) as ``<output_root>/<name_tag>``.

    ``name_tag`` is ``<model>.<recipe>_<dataset>`` (or ``<model>.<dataset>``), timm's tag style; the
    run's classifier must fit the dataset. Publishing into the zoo's own checkpoints folder (no
    ``output_root``) also rewrites the package's manifest of published weights.

    ``card=False`` records a run that is not a published weight (an extra seed for the report): the
    same weights file, config and results, evaluated the same way, without the model card and its
    figures, so it cannot be pushed to the Hub or taken for a tag's weights.
    """
    name, dataset, tag = _check_name(name_tag)
    source = Path(source)
    run_dir = source if source.is_dir() else source.parent
    checkpoint_file = _run_checkpoint(run_dir, checkpoint) if source.is_dir() else source
    try:
        state = read_checkpoint(checkpoint_file)
    except CheckpointError as err:
        raise PublishError(str(err)) from None
    # A published folder republished (to regenerate its card and records) keeps what its first
    # publish recorded of the run: its arguments (recipe.yaml), which weights these are, and their source.
    earlier = json.loads((run_dir / RESULTS_FILENAME).read_text()) if (run_dir / RESULTS_FILENAME).is_file() else {}
    if weights == 'auto':
        weights = earlier.get('weights') or ('ema' if 'state_dict_ema' in state else 'model')
    if weights == 'ema' and 'state_dict_ema' not in state and not earlier:
        raise PublishError(f'{checkpoint_file} has no EMA weights; use weights="model".')
    state_dict = state['state_dict_ema' if 'state_dict_ema' in state and weights == 'ema' else 'state_dict']
    args_file = run_dir / ARGS_FILE if (run_dir / ARGS_FILE).is_file() else run_dir / 'recipe.yaml'
    run_args = yaml.safe_load(args_file.read_text()) if args_file.is_file() else {}
    num_classes = state_dict['fc.weight'].shape[0] if 'fc.weight' in state_dict else None
    if num_classes != CIFAR_NUM_CLASSES[dataset]:
        raise PublishError(
            f'{checkpoint_file} has a {num_classes}-class classifier, but {name_tag} names {dataset} weights '
            f'({CIFAR_NUM_CLASSES[dataset]} classes). The zoo publishes CIFAR weights; keep a fine-tuned model as '
            f'its run folder, or load its weights with pretrained_cfg_overlay=dict(file=...).')

    model_args = dict(run_args.get('model_kwargs') or {})
    # Without the fields that describe the weights the name may already have: config.json describes these.
    model = create_model(f'{name}.{dataset}', pretrained_cfg_overlay=dict.fromkeys(WEIGHTS_CFG_FIELDS), **model_args)
    model.load_state_dict(state_dict)

    zoo_root = checkpoints_dir()
    if not card and output_root is None:
        raise PublishError(f'A run recorded without a card is not a published weight: pass --output, a folder outside '
                           f'the checkpoints folder, e.g. docs/results/seeds/{run_dir.name}.')
    if output_root is None and zoo_root is None:
        raise PublishError('No checkpoints folder to publish into: pass --output, or set $TIMM_FRELU_CHECKPOINTS.')
    output_root = Path(output_root) if output_root else zoo_root
    output_root.mkdir(parents=True, exist_ok=True)
    final = output_root / name_tag
    _recover_interrupted(output_root, name_tag)
    stage = Path(tempfile.mkdtemp(prefix=f'.{name_tag}.', dir=output_root))
    try:
        stored = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        save_file(stored, stage / WEIGHTS_FILENAME, metadata={'format': 'pt'})
        if run_args:
            (stage / 'recipe.yaml').write_text(yaml.safe_dump(portable_args(run_args), sort_keys=False))
        if (run_dir / SUMMARY_FILE).is_file():
            shutil.copy(run_dir / SUMMARY_FILE, stage / SUMMARY_FILE)

        sha256 = file_sha256(stage / WEIGHTS_FILENAME)
        evaluations = _evaluate_stored_file(name_tag, dataset, stage / WEIGHTS_FILENAME, eval_datasets, data_dir, model_args)
        training = {key: value for key, value in portable_args(run_args).items()
                    if key in ('model', 'dataset', 'train_split', 'seed', 'epochs', 'config', 'precision', 'restarts')}
        if (stage / SUMMARY_FILE).is_file():
            training['summary_csv'] = 'summary.csv'  # beside results.json
        for result in evaluations:
            result['training'] = training if run_args else None
            result['data'] = portable_source(result['data'])
            result['weights']['ema'] = weights == 'ema'  # the stored file holds the weights named above
        results = dict(
            model=name_tag, weights_file=WEIGHTS_FILENAME, weights_sha256=sha256, weights_dtype=dtype,
            weights=weights, source_checkpoint=earlier.get('source_checkpoint') or f'{run_dir.name}/{checkpoint_file.name}',
            source_epoch=earlier['source_epoch'] if earlier else _source_epoch(state, stage),
            evaluations=evaluations,
        )
        write_json_atomic(stage / RESULTS_FILENAME, results)
        described = weights_entry(results, portable_args(run_args), num_classes).pretrained_cfg_fields()
        if not card:  # a record kept in the repo, never a Hub repo of its own
            described.pop('origin_url')
        write_config(model, stage / 'config.json', dict(tag=tag, **described), model_args)
        if card:
            has_figure = figure and _draw_figure(f'{name}.{dataset}', stage, data_dir)
            if figure and (stage / SUMMARY_FILE).is_file():
                _draw_learning_curve(name_tag, stage, run_args)
            (stage / 'README.md').write_text(render_card(name_tag, results, run_args, stage, has_figure))

        # mkdtemp makes a private folder; a published one is readable like any checkout.
        stage.chmod(0o755)
        for path in stage.iterdir():
            path.chmod(0o644)
        backup = output_root / f'.{name_tag}.old'
        if final.exists():
            shutil.rmtree(backup, ignore_errors=True)
            final.rename(backup)
        stage.rename(final)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if zoo_root is not None and output_root.resolve() == zoo_root.resolve():
        write_manifest(build_manifest(zoo_root))
    return final


def write_config(model: torch.nn.Module, path: Path, pretrained_cfg: Dict[str, Any], model_args: Dict[str, Any]) -> None:
    """timm's ``config.json`` of ``model``, readable by transformers' timm wrapper too
    (``AutoModelForImageClassification``), which builds the model as
    ``timm.create_model(architecture, num_classes=<its label count>, **model_args)``: so
    ``model_args`` must not repeat ``num_classes``, the class names go at the top level too (its
    ``id2label``), and ``dtype`` says the model runs in fp32 (it would otherwise take the fp16 of
    the stored weights). timm reads ``num_classes`` from the top level."""
    save_config_for_hf(model, str(path), model_config={'pretrained_cfg': pretrained_cfg}, model_args=model_args or None)
    config = json.loads(path.read_text())
    config.get('model_args', {}).pop('num_classes', None)
    label_names = config['pretrained_cfg'].get('label_names')
    if label_names:
        config['label_names'] = label_names
    config['dtype'] = 'float32'
    path.write_text(json.dumps(config, indent=2))


def _recover_interrupted(output_root: Path, name_tag: str) -> None:
    """Undo what a publish killed midway left: restore the previous folder if it was moved aside
    and not replaced, and remove half-built staging folders (neither is ever loaded)."""
    final, backup = output_root / name_tag, output_root / f'.{name_tag}.old'
    if backup.is_dir() and not final.exists():
        backup.rename(final)
    for stale in output_root.glob(f'.{name_tag}.*'):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _check_name(name_tag: str) -> Tuple[str, str, str]:
    """``(model, dataset, tag)`` of a publish name, or a PublishError that says what is wrong."""
    parsed = ZooName.parse(name_tag)
    name, tag = parsed.model, parsed.tag
    if not tag:
        raise PublishError(f'Name the checkpoint as <model>.<tag>, e.g. resnet20_frelu.gpu_cifar10, not {name_tag!r}.')
    try:
        check_model_name(name)
        return name, tag_dataset(tag), tag
    except ValueError as err:
        raise PublishError(str(err)) from None


def _source_epoch(state: Dict[str, Any], stage: Path) -> Optional[int]:
    """The epoch the weights are from: the checkpoint's, else the last of the run's summary."""
    if state.get('epoch') is not None:
        return state['epoch']
    rows = read_summary(stage / SUMMARY_FILE)
    return int(rows[-1]['epoch']) if rows else None


def _evaluate_stored_file(name_tag: str, tag_dataset: str, weights: Path, datasets: Sequence[str],
                          data_dir: Optional[str], model_args: Dict[str, Any]) -> List[Dict[str, Any]]:
    name = name_tag.split('.')[0]
    evaluations = []
    # Plain evaluations first (the card's and the manifest's numbers); flip-TTA ones after, reported apart.
    for tta_flip, dataset in [(tta_flip, dataset) for tta_flip in (False, True) for dataset in datasets]:
        result = validate(validation_args(model=f'{name}.{tag_dataset}', checkpoint=str(weights), dataset=dataset,
                                          data_dir=data_dir, model_kwargs=dict(model_args), tta_flip=tta_flip))
        result['weights']['file'] = WEIGHTS_FILENAME  # relative: the folder moves, and ships to the Hub
        result['model'] = name_tag
        evaluations.append(result)
    return evaluations


def _draw_figure(model_name: str, stage: Path, data_dir: Optional[str]) -> bool:
    from ..studies.visualize import show_frelu
    if not model_name.split('.')[0].endswith('_frelu'):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _, conditions = show_frelu(model_name, Path(tmp), checkpoint=str(stage / WEIGHTS_FILENAME),
                                       dataset='shared/cifar10-lossless', data_dir=data_dir)
        except DataError as err:  # the figure needs the shared test images; the checkpoint does not
            print(f'publish: no FReLU figure ({str(err).splitlines()[0]})')
            return False
        shutil.copy(conditions, stage / 'frelu.png')
    return True


def _draw_learning_curve(name_tag: str, stage: Path, run_args: Dict[str, Any]) -> None:
    eval_data = f"{run_args.get('dataset', 'eval data')}/{run_args.get('val_split', 'test')}"
    weights = 'EMA weights' if run_args.get('model_ema') else 'weights'
    try:
        plot_learning_curve(stage / SUMMARY_FILE, stage / LEARNING_CURVE_FILENAME,
                            f'{name_tag}: training run, epoch by epoch', f'{eval_data} ({weights})')
    except ValueError as err:  # a summary without evaluated epochs: the card goes without the curve
        print(f'publish: no learning curve ({err})')
