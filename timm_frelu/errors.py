"""The base of the errors that the command-line tools report in one line.

Each of the package's error classes also keeps the builtin base it had (RuntimeError or ValueError),
so callers that catch those still do.
"""


class TimmFreluError(Exception):
    """Bad input the user can fix (data, weights, checkpoints, recipes, uploads); the message says how."""


class MissingExtraError(TimmFreluError, ImportError):
    """A tool needs a package of one of the optional extras, which is not installed."""

    def __init__(self, package: str, extra: str, what: str) -> None:
        super().__init__(f"{what} needs {package}, which is not installed: pip install 'timm-frelu[{extra}]' "
                         f"(or pip install {package}).")


def require_optuna():
    """Optuna, for sweeps and the rank check: the ``[zoo]`` extra, not a dependency of the library."""
    try:
        import optuna
    except ImportError:
        raise MissingExtraError('optuna', 'zoo', 'Sweeps and the rank check') from None
    return optuna


# The command shell (timm_frelu.cli.run_command) prints these as one line: OSError (a missing or
# unreadable file) and ValueError come from torch, timm and argument checks whose messages already
# name the file or the bad value.
COMMAND_LINE_ERRORS = (TimmFreluError, OSError, ValueError)
