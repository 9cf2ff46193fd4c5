"""Argument namespaces for library code: a command's defaults with some arguments set by name."""
import argparse
from typing import Any, Dict


def override_args(args: argparse.Namespace, overrides: Dict[str, Any], command: str) -> argparse.Namespace:
    """``args`` with ``overrides`` set, each the name of one of ``command``'s arguments."""
    unknown = sorted(set(overrides) - set(vars(args)))
    if unknown:
        raise ValueError(f'{", ".join(map(repr, unknown))}: not an argument of the {command} command '
                         f'({command} --help lists them).')
    for key, value in overrides.items():
        setattr(args, key, value)
    return args
