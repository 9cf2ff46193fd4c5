"""``python -m timm_frelu.validate`` and ``timm-frelu-validate``, the evaluation command the model
cards print. The script is ``timm_frelu/training/validate.py``; this keeps its published name."""
import sys
from typing import List, Optional

from .cli import run_command
from .training import validate


def main(argv: Optional[List[str]] = None) -> int:
    return run_command('timm-frelu-validate', validate.main, sys.argv[1:] if argv is None else argv)


if __name__ == '__main__':
    sys.exit(main())
