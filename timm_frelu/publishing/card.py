"""The model card (``README.md``) of a published checkpoint, made from its results and recipe.

Metadata goes through huggingface_hub's ``ModelCardData`` (``model-index`` included), so the Hub
reads it as it reads any card; every number in the text comes from ``results.json``.
"""
from pathlib import Path
from typing import Any, Dict, List

import yaml
from huggingface_hub import EvalResult, ModelCardData

from ..layers import ACT_TITLES
from ..models import ACTS
from ..pretrained import ZooName, hub_repo_id
from ..pretrained.datasets import CIFAR_NUM_CLASSES
from ..studies.summary import model_summary
from ..training.run_folder import RESTART_WEIGHTS
from .provenance import dataset_id, describe_test_data, describe_training_data, hub_split, reproduce_command

LEARNING_CURVE_FILENAME = 'learning_curve.png'

RECIPE_KEYS = ('epochs', 'opt', 'lr', 'momentum', 'weight_decay', 'batch_size', 'sched', 'decay_milestones',
               'warmup_epochs', 'smoothing', 'model_ema', 'model_ema_decay', 'mixup', 'cutmix', 'aa', 'cutout',
               'crop_padding', 'hflip', 'seed', 'dataset', 'precision')

CITATION = '''@inproceedings{ma2020funnel,
  title={Funnel Activation for Visual Recognition},
  author={Ma, Ningning and Zhang, Xiangyu and Sun, Jian},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2020}
}

@inproceedings{he2016deep,
  title={Deep Residual Learning for Image Recognition},
  author={He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2016}
}

@misc{rw2019timm,
  author={Ross Wightman},
  title={PyTorch Image Models},
  year={2019},
  publisher={GitHub},
  howpublished={\\url{https://github.com/huggingface/pytorch-image-models}}
}'''

# Public CIFAR-10 results of the same architectures with ReLU, from their projects' READMEs (the
# official test set): what a reader compares these weights with.
PUBLIC_CIFAR10 = {
    'resnet20': [('chenyaofo/pytorch-cifar-models', 'https://github.com/chenyaofo/pytorch-cifar-models', 92.60,
                  '200 epochs, cosine, batch 256')],
    'resnet56': [('chenyaofo/pytorch-cifar-models', 'https://github.com/chenyaofo/pytorch-cifar-models', 94.37,
                  '200 epochs, cosine, batch 256')],
    'resnet18': [('edadaltocg/resnet18_cifar10', 'https://huggingface.co/edadaltocg/resnet18_cifar10', 94.98, ''),
                 ('huyvnphan/PyTorch_CIFAR10', 'https://github.com/huyvnphan/PyTorch_CIFAR10', 93.07, ''),
                 ('kuangliu/pytorch-cifar', 'https://github.com/kuangliu/pytorch-cifar', 93.02, '')],
    'resnet34': [('huyvnphan/PyTorch_CIFAR10', 'https://github.com/huyvnphan/PyTorch_CIFAR10', 93.34, '')],
    'resnet50': [('huyvnphan/PyTorch_CIFAR10', 'https://github.com/huyvnphan/PyTorch_CIFAR10', 93.65, '')],
}


def _data_label(result: Dict[str, Any]) -> str:
    data = result['data']
    return f"{data['dataset']}/{data['split']}"


def _restarts_paragraph(restarts: List[Dict[str, Any]]) -> List[str]:
    if not restarts:
        return []
    where = '; '.join(f"at epoch {r['epoch']} from the weights in `{r['weights']}`"
                      + (" (its queue's 4-bit lean snapshot, restored on a new machine)" if r['weights'] == RESTART_WEIGHTS else '')
                      for r in restarts)
    return [f'It was not one unbroken run: it went on {where}, with fresh optimizer momentum and a fresh EMA. '
            'The command above trains it unbroken.', '']


def render_card(name_tag: str, results: Dict[str, Any], run_args: Dict[str, Any], folder: Path, has_figure: bool) -> str:
    zoo_name = ZooName.parse(name_tag)
    name, tag, dataset, arch, act = zoo_name.model, zoo_name.tag, zoo_name.dataset, zoo_name.arch, zoo_name.act
    cost = model_summary(name)
    evaluations = results['evaluations']
    plain = [r for r in evaluations if not r.get('tta_flip')]
    # Flip-TTA top-1 of the same file on the same data, a column of its own (older publishes have none).
    tta_top1 = {_data_label(r): r['top1'] for r in evaluations if r.get('tta_flip')}
    card_data = ModelCardData(
        library_name='timm',
        license='apache-2.0',
        tags=['image-classification', 'timm', 'cifar', act] + (['frelu', 'funnel-activation'] if act == 'frelu' else []),
        datasets=[dataset_id(run_args.get('dataset'))] if dataset_id(run_args.get('dataset')) else None,
        model_name=name_tag,
        eval_results=[
            # The data in words: the Hub's config field names a load_dataset config, not one of our folders.
            EvalResult(task_type='image-classification', dataset_type=dataset_id(r['data']['dataset']) or 'imagefolder',
                       dataset_name=describe_test_data(r['data']), dataset_split=hub_split(r['data']),
                       metric_type='accuracy', metric_name='top-1 accuracy', metric_value=round(r['top1'], 2))
            for r in plain
        ],
    )
    layout = (run_args.get('model_kwargs') or {}).get('act_layout', 'paper')
    # Options that are off say nothing; milestones only matter to a multistep schedule.
    recipe = {k: run_args[k] for k in RECIPE_KEYS if k in run_args and (run_args[k] or k == 'seed')
              and (k != 'decay_milestones' or run_args.get('sched') == 'multistep')}
    lines = [
        f'---\n{card_data.to_yaml()}\n---',
        f'# {name_tag}',
        '',
        f'`{arch}` with **{ACT_TITLES.get(act, act)}** in its residual blocks, a {CIFAR_NUM_CLASSES[dataset]}-class '
        f'classifier trained on {describe_training_data(run_args) if run_args else "data that was not recorded"}, for '
        f'[timm](https://github.com/huggingface/pytorch-image-models) with the timm-frelu plugin. '
        f'Hub repo: `{hub_repo_id(name, tag)}`.',
        '',
    ]
    if act == 'frelu':
        lines += [
            'FReLU is the **Funnel activation** of Ma, Zhang and Sun (ECCV 2020, arXiv:2007.11824): '
            '`y = max(x, BN(DepthwiseConv3x3(x)))`, a ReLU whose threshold is a learned spatial condition. '
            'It is not the unrelated "Flexible ReLU" (arXiv:1706.08098).',
            '',
        ]
    elif act in ACTS:
        lines += [f'This is a baseline of the timm-frelu zoo: the same network as `{arch}_frelu` with '
                  f'{ACT_TITLES[act]} where that model has FReLU.', '']
    lines += [
        '## Architecture',
        '',
        f'- activation layout: `{layout}` (`paper`: the residual blocks of stages 1-3; stem and stage 4 keep ReLU)',
        '- stem: CIFAR (3x3 stride-1 conv, no max-pool); input 32x32',
        f"- params: {cost['params'] / 1e6:.3f} M; MACs: {cost['macs'] / 1e9:.3f} G per 32x32 image "
        '(convolutions and linear layers)',
        '',
        '## Results',
        '',
        f"Measured by `timm_frelu.validate` on this repo's `model.safetensors` ({results['weights_dtype']}, "
        f"{'EMA weights' if results['weights'] == 'ema' else 'final weights, no EMA'}, "
        f"SHA256 `{results['weights_sha256']}`), without test-time augmentation"
        + ("; the last column is apart: the same file with flip-TTA (logits averaged over each image and its "
           "mirror image)." if tta_top1 else '.'),
        '',
        '| test data | images | top-1 (%) | top-5 (%) | loss |' + (' top-1 with flip-TTA (%) |' if tta_top1 else ''),
        '| --- | --- | --- | --- | --- |' + (' --- |' if tta_top1 else ''),
    ]
    for r in plain:
        tta = f" {tta_top1[_data_label(r)]:.2f} |" if _data_label(r) in tta_top1 else (' - |' if tta_top1 else '')
        lines.append(f"| {describe_test_data(r['data'])} (`{_data_label(r)}`) | "
                     f"{r['count']} | {r['top1']:.2f} | {r['top5']:.2f} | {r['loss']:.4f} |{tta}")
    lines += ['', 'Per-class top-1 and the SHA256 of the evaluated pixels are in `results.json`.', '']
    if has_figure:
        lines += ['## What FReLU learned', '',
                  'For one test image, at every FReLU layer: the input x of one channel, its funnel condition '
                  'T(x), where max picks T(x), and in what share of channels it does.', '', '![funnel conditions](frelu.png)', '']
    lines += ['## Training', '']
    if recipe:
        lines += ['```yaml', yaml.safe_dump(recipe, sort_keys=False).strip(), '```', '']
        lines += [f'Trained on {describe_training_data(run_args)}. To repeat the run:', '',
                  f'    {reproduce_command(run_args)}', '',
                  'Full arguments: `recipe.yaml`; epoch by epoch: `summary.csv`.', '']
        lines += _restarts_paragraph(run_args.get('restarts') or [])
    if (folder / LEARNING_CURVE_FILENAME).is_file():
        epoch = results.get('source_epoch')
        lines += [f'![learning curve]({LEARNING_CURVE_FILENAME})', '',
                  'The run\'s own log, epoch by epoch (`summary.csv`): the eval data was watched, not used to '
                  'choose the weights' + (f'; the published ones are from epoch {epoch + 1}.' if epoch is not None else '.'), '']
    else:
        lines += ['No training arguments were recorded with this checkpoint.', '']
    public = PUBLIC_CIFAR10.get(arch, []) if dataset == 'cifar10' else []
    if public:
        lines += ['## Beside public results', '',
                  f'Public CIFAR-10 `{arch}` models with ReLU, as their own READMEs report them on the official test '
                  'set, each with its own recipe; compare them with the original-pixel row above, the closer estimate '
                  'of official accuracy:', '',
                  '| source | top-1 (%) | training |', '| --- | --- | --- |']
        lines += [f'| [{source}]({url}) | {top1:.2f} | {training or "-"} |' for source, url, top1, training in public]
        lines += ['']
    repo = hub_repo_id(name, tag)
    lines += [
        '## Usage',
        '',
        'The architecture comes with the **timm-frelu** plugin: install it (`pip install timm-frelu`, from its wheel '
        'or a source checkout), and import it before creating the model. Without the import, timm reports '
        f'"Unknown model" for `hf-hub:{repo}`, and so does the Hub\'s own timm snippet.',
        '',
        '```python',
        'import timm, torch',
        'import timm_frelu  # registers the architectures with timm',
        '',
        f"model = timm.create_model('hf-hub:{repo}', pretrained=True).eval()  # or '{name_tag}'",
        'config = timm.data.resolve_model_data_config(model)  # 32x32, CIFAR mean/std, crop 1.0',
        'transform = timm.data.create_transform(**config)',
        '',
        '# classification: image is a PIL image',
        'probabilities = model(transform(image).unsqueeze(0)).softmax(-1)',
        '',
        '# feature maps: the stem and every stage',
        f"features = timm.create_model('hf-hub:{repo}', pretrained=True, features_only=True).eval()",
        'maps = features(torch.randn(1, 3, 32, 32))',
        '',
        '# embeddings: pooled features before the classifier',
        'embedding = model.forward_head(model.forward_features(torch.randn(1, 3, 32, 32)), pre_logits=True)',
        '```',
        '',
        'transformers loads it too, once the plugin is imported: '
        f"`AutoModelForImageClassification.from_pretrained('{repo}')` (timm's wrapper; `config.id2label` holds the "
        'class names).',
        '',
        'Fine-tune with timm\'s own `train.py` (from a clone of timm\'s repository) through '
        '`timm-frelu run path/to/pytorch-image-models/train.py --model {0} --pretrained --num-classes N ...`, or with '
        '`python -m timm_frelu.train --model {0} --pretrained --dataset folder --data-dir DIR --num-classes N`.'.format(name_tag),
        '',
        '## Limitations',
        '',
        '- Trained and tested at 32x32 on CIFAR-sized images; not an ImageNet model.',
    ]
    if dataset == 'cifar10':
        lines.append(f'- `{name}.cifar100` weights are pending data: no CIFAR-100 copy was available to train them; '
                     'its tag, recipes and code are ready.')
    if run_args.get('dataset') == 'shared/cifar10-jpeg':
        lines.append('- Trained on a lossy JPEG copy of CIFAR-10 (the official archives could not be reached); '
                     'accuracy on the official test set can differ.')
    if any(r['data']['dataset'] == 'shared/cifar10-jpeg' for r in plain):
        lines.append('- The 10,000-image test set above is the same JPEG copy, not the official pixels; the 1,000 '
                     'original test images are the closer estimate of official accuracy (binomial standard error '
                     'about ±0.7 points at 95%).')
    lines += ['', '## Citation', '', '```bibtex', CITATION, '```', '']
    return '\n'.join(lines)
