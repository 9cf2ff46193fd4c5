"""The ``timm-frelu`` command."""
import argparse
import glob
import sys
from pathlib import Path
from typing import List, Optional


def _models(args: argparse.Namespace) -> int:
    from .summary import model_table, update_readme
    if args.update_readme:
        changed = update_readme(Path(args.update_readme))
        print(f"{args.update_readme}: model table {'updated' if changed else 'already current'}")
    else:
        print(model_table())
    return 0


def _main_job(args: argparse.Namespace) -> int:
    from .main_job import run
    return run(args.output)


def _recipes(args: argparse.Namespace) -> int:
    from .recipes import write_recipes
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
    print(outputs['markdown'].read_text())
    return 0


def _show_frelu(args: argparse.Namespace) -> int:
    from .visualize import show_frelu
    for path in show_frelu(args.model, Path(args.output), checkpoint=args.checkpoint, pretrained=args.pretrained,
                           dataset=args.dataset, split=args.split, image_index=args.image_index, data_dir=args.data_dir,
                           num_classes=args.num_classes):
        print(path)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-frelu', description='FReLU (Funnel activation) models for timm.')
    commands = parser.add_subparsers(dest='command', required=True)
    models = commands.add_parser('models', help='list the registered architectures with params and MACs per activation')
    models.add_argument('--update-readme', metavar='README', help='rewrite the model table of this README instead of printing it')
    models.set_defaults(run=_models)
    main_job = commands.add_parser('main', help='the main job: validate the default checkpoint, or train one briefly first')
    main_job.add_argument('--output', default='output/main', help='parent folder of the run folder')
    main_job.set_defaults(run=_main_job)
    recipes = commands.add_parser('recipes', help='write the zoo_configs recipe files')
    recipes.add_argument('--write', default='zoo_configs', metavar='DIR')
    recipes.set_defaults(run=_recipes)
    report = commands.add_parser('report', help='compare activations from eval results files (JSON of timm-frelu-validate)')
    report.add_argument('results', nargs='+', help='results files or glob patterns')
    report.add_argument('--output', default='output/report', help='folder for report.md, report.csv and figures')
    report.add_argument('--no-speed', action='store_true', help='skip measuring train/inference images/s')
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
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(main())
