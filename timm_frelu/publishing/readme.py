"""Generated sections of the README, each between ``<!-- NAME:start ... -->`` and ``<!-- NAME:end -->``."""
from pathlib import Path

from ..fileio import write_text_atomic


def replace_section(text: str, name: str, content: str) -> str:
    """``text`` with the lines between the ``name`` markers replaced by ``content``."""
    start = text.find(f'<!-- {name}:start')
    start_end = text.find('-->', start) + len('-->') if start >= 0 else -1
    end = text.find(f'<!-- {name}:end -->')
    if start < 0 or end < start_end:
        raise ValueError(f'The README has no {name} markers; add a line "<!-- {name}:start -->" and a line '
                         f'"<!-- {name}:end -->" where the section should go.')
    return f'{text[:start_end]}\n{content}\n{text[end:]}'


def update_section(path: Path, name: str, content: str) -> bool:
    """Rewrite one generated section of the README at ``path``; True if it changed."""
    text = Path(path).read_text()
    updated = replace_section(text, name, content)
    if updated != text:
        write_text_atomic(Path(path), updated)
    return updated != text
