"""The base of the errors that the command-line tools report in one line.

Each of the package's error classes also keeps the builtin base it had (RuntimeError or ValueError),
so callers that catch those still do.
"""


class TimmFreluError(Exception):
    """Bad input the user can fix (data, weights, checkpoints, recipes, uploads); the message says how."""


# A command catches these and prints the message alone: FileNotFoundError and ValueError come from
# torch, timm and argparse-level checks whose messages already name the missing file or bad value.
COMMAND_LINE_ERRORS = (TimmFreluError, FileNotFoundError, ValueError)
