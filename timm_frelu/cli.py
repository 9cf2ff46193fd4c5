"""The ``timm-frelu`` command."""
import argparse
import glob
import os
import sys
from pathlib import Path
from typing import List, Optional


def _table(args: argparse.Namespace, section: str, what: str, make) -> int:
    """Print a generated table, or with --update-readme rewrite its section of that Markdown file."""
    if not args.update_readme:
        print(make())
        return 0
    from .readme import update_section
    changed = update_section(Path(args.update_readme), section, make())
    print(f"{args.update_readme}: {what} {'updated' if changed else 'already current'}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .summary import MODEL_TABLE, model_table
    return _table(args, MODEL_TABLE, 'model table', model_table)


def _weights(args: argparse.Namespace) -> int:
    from .summary import WEIGHTS_TABLE, weights_table
    return _table(args, WEIGHTS_TABLE, 'pretrained-weights table', weights_table)


def _main_job(args: argparse.Namespace) -> int:
    from .main_job import run
    return run(args.output)


def _recipes(args: argparse.Namespace) -> int:
    from .recipes import recipes, write_recipes
    if not args.write:
        for rel, _, _ in recipes():
            print(rel)
        print('(the recipe files; write them with: timm-frelu recipes --write zoo_configs)')
        return 0
    changed = write_recipes(Path(args.write))
    print(f'{args.write}: {changed} recipe files written')
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report
    paths = [Path(p) for pattern in args.results for p in (sorted(glob.glob(pattern)) or [pattern])]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f'error: no such results file: {", ".join(missing)}', file=sys.stderr)
        return 2
    outputs = write_report(paths, Path(args.output), speed=not args.no_speed)
    for kind, path in outputs.items():
        if path:
            print(f'{kind}: {path}')
    text = outputs['markdown'].read_text()
    print(text)
    if args.update_readme:
        from .readme import update_section
        figure = os.path.relpath(outputs['accuracy'], Path(args.update_readme).parent)
        update_section(Path(args.update_readme), 'results', f'{text}\n![top-1 by activation]({figure})')
        print(f'{args.update_readme}: results section updated')
    return 0


def _show_frelu(args: argparse.Namespace) -> int:
    from .visualize import show_frelu
    for path in show_frelu(args.model, Path(args.output), checkpoint=args.checkpoint, pretrained=args.pretrained,
                           dataset=args.dataset, split=args.split, image_index=args.image_index, data_dir=args.data_dir,
                           num_classes=args.num_classes):
        print(path)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from .hub import publish
    folder = publish(Path(args.source), args.name, output_root=Path(args.output) if args.output else None,
                     checkpoint=args.checkpoint, weights=args.weights, dtype=args.dtype,
                     eval_datasets=args.eval_dataset, data_dir=args.data_dir, figure=not args.no_figure,
                     card=not args.no_card)
    print(f"{'published' if not args.no_card else 'recorded'} {folder}")
    print((folder / 'results.json').read_text())
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import push
    url = push(Path(args.folder), repo_id=args.repo_id, endpoint=args.endpoint, revision=args.revision,
               private=args.private, dry_run=args.dry_run)
    if url:
        print(f'pushed: {url}')
    return 0


# Subcommands whose module has its own ``main(argv)``.
DELEGATED = {
    'sweep': 'run an Optuna sweep of training arguments (timm-frelu sweep --help)',
    'train-queue': 'train a queue of runs, resuming where it stopped (timm-frelu train-queue --help)',
    'rank-check': "compare a sweep's proxy ranking with its trials trained at full length (timm-frelu rank-check --help)",
    'gpu-zoo': 'train a plan on a lent GPU, and publish what it returns (timm-frelu gpu-zoo --help)',
    'run': "run one of timm's scripts (train.py, validate.py, ...) with these models registered",
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-frelu', description='FReLU (Funnel activation) models for timm.')
    commands = parser.add_subparsers(dest='command', required=True)
    models = commands.add_parser('models', help='list the registered architectures with params and MACs per activation')
    models.add_argument('--update-readme', metavar='FILE', help='rewrite the model table of this Markdown file (docs/models.md) instead of printing it')
    models.set_defaults(run=_models)
    weights = commands.add_parser('weights', help='list the published weights with their top-1 on each test set')
    weights.add_argument('--update-readme', metavar='README', help='rewrite the weights table of this README instead of printing it')
    weights.set_defaults(run=_weights)
    main_job = commands.add_parser('main', help='the main job: validate the default checkpoint, or train one briefly first')
    main_job.add_argument('--output', default='output/main', help='parent folder of the run folder')
    main_job.set_defaults(run=_main_job)
    recipes = commands.add_parser('recipes', help='list the zoo_configs recipe files, or write them with --write DIR')
    recipes.add_argument('--write', default=None, metavar='DIR', help='write (or rewrite) the recipes under DIR')
    recipes.set_defaults(run=_recipes)
    report = commands.add_parser('report', help='compare activations from eval results files (JSON of timm-frelu-validate)')
    report.add_argument('results', nargs='+', help='results files or glob patterns')
    report.add_argument('--output', default='output/report', help='folder for report.md, report.csv and figures')
    report.add_argument('--no-speed', action='store_true', help='skip measuring train/inference images/s')
    report.add_argument('--update-readme', metavar='README', help='also write the report into this README\'s results section')
    report.set_defaults(run=_report)
    show = commands.add_parser('show-frelu', help='draw the funnel kernels and conditions of a FReLU model')
    show.add_argument('--model', default='resnet20_frelu')
    show.add_argument('--checkpoint', default=None)
    show.add_argument('--pretrained', action='store_true')
    show.add_argument('--num-classes', type=int, default=None, help="the checkpoint's classifier size, if not the model's")
    show.add_argument('--dataset', default='shared/cifar10-lossless')
    show.add_argument('--data-dir', default=None)
    show.add_argument('--split', default='test')
    show.add_argument('--image-index', type=int, default=0)
    show.add_argument('--output', default='output/frelu')
    show.set_defaults(run=_show_frelu)
    publish = commands.add_parser('publish', help='export a training run into checkpoints/<name>.<tag>/ with its card')
    publish.add_argument('source', help='a training run folder, or a checkpoint file in one')
    publish.add_argument('--name', required=True, help='<model>.<tag>, e.g. resnet20_frelu.cifar10')
    publish.add_argument('--output', default=None, help='parent folder (default: the checkpoints folder)')
    publish.add_argument('--checkpoint', choices=('last', 'best'), default='last', help='which checkpoint of a run folder')
    publish.add_argument('--weights', choices=('auto', 'ema', 'model'), default='auto', help='auto: EMA when the run kept one')
    publish.add_argument('--dtype', choices=('float16', 'float32', 'bfloat16'), default='float16', help='storage dtype')
    publish.add_argument('--eval-dataset', nargs='+', default=['shared/cifar10-jpeg', 'shared/cifar10-lossless'])
    publish.add_argument('--data-dir', default=None)
    publish.add_argument('--no-figure', action='store_true', help="skip the figures: the FReLU model's funnel conditions and the learning curve")
    publish.add_argument('--no-card', action='store_true',
                         help='record a run that is not a published weight (an extra seed for the report): weights, '
                              'config and results in --output, evaluated as a published one, without a card or figures')
    publish.set_defaults(run=_publish)
    push = commands.add_parser('push', help='upload a checkpoint folder to the Hugging Face Hub as one commit')
    push.add_argument('folder')
    push.add_argument('--repo-id', default=None, help='default: timm-frelu/<folder name>')
    push.add_argument('--endpoint', default=None, help='default: $HF_ENDPOINT or huggingface.co')
    push.add_argument('--revision', default=None)
    push.add_argument('--private', action='store_true')
    push.add_argument('--dry-run', action='store_true', help='print what would be sent, send nothing')
    push.set_defaults(run=_push)
    for name, help_text in DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        # These commands have parsers of their own (and --help); hand them the rest of the line.
        from importlib import import_module
        from .errors import MissingExtraError
        try:
            command = import_module(f'.{argv[0].replace("-", "_")}', __package__)
        except MissingExtraError as err:
            print(f'error: {err}', file=sys.stderr)
            return 2
        return command.main(argv[1:])
    args = parser.parse_args(argv)
    from .errors import COMMAND_LINE_ERRORS
    try:
        return args.run(args)
    except COMMAND_LINE_ERRORS as err:
        print(f'error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
