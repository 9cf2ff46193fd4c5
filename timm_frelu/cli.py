"""The ``timm-frelu`` command: one table of subcommands, one error policy."""
import argparse
import glob
import os
import sys
from importlib import import_module
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional

from .errors import COMMAND_LINE_ERRORS


def _parser(command: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f'timm-frelu {command}', description=COMMANDS[command].help)


def _print_or_update(update_readme: Optional[str], section: str, what: str, table: str) -> int:
    """Print a generated table, or rewrite its section of that Markdown file."""
    if not update_readme:
        print(table)
        return 0
    from .publishing.readme import update_section
    changed = update_section(Path(update_readme), section, table)
    print(f"{update_readme}: {what} {'updated' if changed else 'already current'}")
    return 0


def _models(argv: List[str]) -> int:
    parser = _parser('models')
    parser.add_argument('--update-readme', metavar='FILE', help='rewrite the model table of this Markdown file (docs/models.md) instead of printing it')
    args = parser.parse_args(argv)
    from .studies.summary import MODEL_TABLE, model_table
    return _print_or_update(args.update_readme, MODEL_TABLE, 'model table', model_table())


def _weights(argv: List[str]) -> int:
    parser = _parser('weights')
    parser.add_argument('--update-readme', metavar='README', help='rewrite the weights table of this README instead of printing it')
    args = parser.parse_args(argv)
    from .studies.summary import WEIGHTS_TABLE, weights_table
    return _print_or_update(args.update_readme, WEIGHTS_TABLE, 'pretrained-weights table', weights_table())


def _main_job(argv: List[str]) -> int:
    parser = _parser('main')
    parser.add_argument('--output', default='output/main', help='parent folder of the run folder')
    args = parser.parse_args(argv)
    from .training.main_job import run
    return run(args.output)


def _recipes(argv: List[str]) -> int:
    parser = _parser('recipes')
    parser.add_argument('--write', default=None, metavar='DIR', help='write (or rewrite) the recipes under DIR')
    args = parser.parse_args(argv)
    from .training.recipes import recipes, write_recipes
    if not args.write:
        for rel, _, _ in recipes():
            print(rel)
        print('(the recipe files; write them with: timm-frelu recipes --write zoo_configs)')
        return 0
    changed = write_recipes(Path(args.write))
    print(f'{args.write}: {changed} recipe files written')
    return 0


def _report(argv: List[str]) -> int:
    parser = _parser('report')
    parser.add_argument('results', nargs='+', help='results files or glob patterns')
    parser.add_argument('--output', default='output/report', help='folder for report.md, report.csv and figures')
    parser.add_argument('--no-speed', action='store_true', help='skip measuring train/inference images/s')
    parser.add_argument('--update-readme', metavar='README', help='also write the report into this README\'s results section')
    args = parser.parse_args(argv)
    paths = [Path(p) for pattern in args.results for p in (sorted(glob.glob(pattern)) or [pattern])]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f'no such results file: {", ".join(missing)}')
    from .studies.report import write_report
    outputs = write_report(paths, Path(args.output), speed=not args.no_speed)
    for kind, path in outputs.items():
        if path:
            print(f'{kind}: {path}')
    text = outputs['markdown'].read_text()
    print(text)
    if args.update_readme:
        from .publishing.readme import update_section
        figure = os.path.relpath(outputs['accuracy'], Path(args.update_readme).parent)
        update_section(Path(args.update_readme), 'results', f'{text}\n![top-1 by activation]({figure})')
        print(f'{args.update_readme}: results section updated')
    return 0


def _show_frelu(argv: List[str]) -> int:
    parser = _parser('show-frelu')
    parser.add_argument('--model', default='resnet20_frelu')
    parser.add_argument('--checkpoint', default=None)
    parser.add_argument('--pretrained', action='store_true')
    parser.add_argument('--num-classes', type=int, default=None, help="the checkpoint's classifier size, if not the model's")
    parser.add_argument('--dataset', default='shared/cifar10-lossless')
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--split', default='test')
    parser.add_argument('--image-index', type=int, default=0)
    parser.add_argument('--output', default='output/frelu')
    args = parser.parse_args(argv)
    from .studies.visualize import show_frelu
    for path in show_frelu(args.model, Path(args.output), checkpoint=args.checkpoint, pretrained=args.pretrained,
                           dataset=args.dataset, split=args.split, image_index=args.image_index, data_dir=args.data_dir,
                           num_classes=args.num_classes):
        print(path)
    return 0


def _publish(argv: List[str]) -> int:
    parser = _parser('publish')
    parser.add_argument('source', help='a training run folder, or a checkpoint file in one')
    parser.add_argument('--name', required=True, help='<model>.<tag>, e.g. resnet20_frelu.cifar10')
    parser.add_argument('--output', default=None, help='parent folder (default: the checkpoints folder)')
    parser.add_argument('--checkpoint', choices=('last', 'best'), default='last', help='which checkpoint of a run folder')
    parser.add_argument('--weights', choices=('auto', 'ema', 'model'), default='auto', help='auto: EMA when the run kept one')
    parser.add_argument('--dtype', choices=('float16', 'float32', 'bfloat16'), default='float16', help='storage dtype')
    parser.add_argument('--eval-dataset', nargs='+', default=['shared/cifar10-jpeg', 'shared/cifar10-lossless'])
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--no-figure', action='store_true', help="skip the figures: the FReLU model's funnel conditions and the learning curve")
    parser.add_argument('--no-card', action='store_true',
                        help='record a run that is not a published weight (an extra seed for the report): weights, '
                             'config and results in --output, evaluated as a published one, without a card or figures')
    args = parser.parse_args(argv)
    from .publishing import publish
    folder = publish(Path(args.source), args.name, output_root=Path(args.output) if args.output else None,
                     checkpoint=args.checkpoint, weights=args.weights, dtype=args.dtype,
                     eval_datasets=args.eval_dataset, data_dir=args.data_dir, figure=not args.no_figure,
                     card=not args.no_card)
    print(f"{'published' if not args.no_card else 'recorded'} {folder}")
    print((folder / 'results.json').read_text())
    return 0


def _push(argv: List[str]) -> int:
    parser = _parser('push')
    parser.add_argument('folder')
    parser.add_argument('--repo-id', default=None, help='default: timm-frelu/<folder name>')
    parser.add_argument('--endpoint', default=None, help='default: $HF_ENDPOINT or huggingface.co')
    parser.add_argument('--revision', default=None)
    parser.add_argument('--private', action='store_true')
    parser.add_argument('--dry-run', action='store_true', help='print what would be sent, send nothing')
    args = parser.parse_args(argv)
    from .publishing import push
    url = push(Path(args.folder), repo_id=args.repo_id, endpoint=args.endpoint, revision=args.revision,
               private=args.private, dry_run=args.dry_run)
    if url:
        print(f'pushed: {url}')
    return 0


def _delegate(module: str) -> Callable[[List[str]], int]:
    """A command whose module parses its own arguments: imported when it runs, so that one command
    doesn't load what the others need (optuna, matplotlib, the training stack)."""
    return lambda argv: import_module(module, __package__).main(argv)


class Command(NamedTuple):
    help: str
    main: Callable[[List[str]], int]


COMMANDS: Dict[str, Command] = {
    'main': Command('the main job: validate the default checkpoint, or train one briefly first', _main_job),
    'models': Command('list the registered architectures with params and MACs per activation', _models),
    'weights': Command('list the published weights with their top-1 on each test set', _weights),
    'run': Command("run one of timm's scripts (train.py, validate.py, ...) with these models registered",
                   _delegate('.training.timm_scripts')),
    'recipes': Command('list the zoo_configs recipe files, or write them with --write DIR', _recipes),
    'train-queue': Command('train a queue of runs, resuming where it stopped', _delegate('.training.queue')),
    'sweep': Command('run an Optuna sweep of training arguments', _delegate('.studies.sweep')),
    'rank-check': Command("compare a sweep's proxy ranking with its trials trained at full length",
                          _delegate('.studies.rank_check')),
    'report': Command('compare activations from eval results files (JSON of timm-frelu-validate)', _report),
    'show-frelu': Command('draw the funnel kernels and conditions of a FReLU model', _show_frelu),
    'publish': Command('export a training run into checkpoints/<name>.<tag>/ with its card', _publish),
    'push': Command('upload a checkpoint folder to the Hugging Face Hub as one commit', _push),
    'gpu-zoo': Command('train a plan on a lent GPU, and publish what it returns', _delegate('.gpu.zoo_job')),
}


def run_command(prog: str, command: Callable[[List[str]], int], argv: List[str]) -> int:
    """Every command's error policy: bad input the user can fix (the package's errors, a missing or
    unreadable file, a bad value) is one line naming the fix and exit status 2, not a traceback."""
    try:
        return command(argv)
    except COMMAND_LINE_ERRORS as err:
        print(f'{prog}: error: {err}', file=sys.stderr)
        return 2


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return run_command(f'timm-frelu {argv[0]}', COMMANDS[argv[0]].main, argv[1:])
    parser = argparse.ArgumentParser(prog='timm-frelu', description='FReLU (Funnel activation) models for timm.',
                                     epilog='Each command has its own --help: timm-frelu COMMAND --help.')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, command in COMMANDS.items():
        commands.add_parser(name, help=command.help)
    parser.parse_args(argv)  # prints the usage, or says which command is unknown, and exits
    return 2


if __name__ == '__main__':
    sys.exit(main())
