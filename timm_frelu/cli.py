"""The ``timm-frelu`` command."""
import argparse
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
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(main())
