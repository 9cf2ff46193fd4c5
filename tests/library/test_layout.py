"""The package's two halves stay apart: the library (what ``import timm_frelu`` loads) imports
nothing from the tooling that makes the zoo."""
import ast
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / 'timm_frelu'
LIBRARY = ('layers', 'models', 'pretrained')
SHARED = ('errors', 'fileio')
TOOLING = ('training', 'studies', 'publishing', 'gpu', 'cli', 'train', 'validate')


def _imported_modules(path):
    """The timm_frelu modules a file imports, as dotted names under the package."""
    parts = path.relative_to(PACKAGE).with_suffix('').parts
    package = parts[:-1] if parts[-1] != '__init__' else parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            yield '.'.join([*base, *([node.module] if node.module else [])])
        elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('timm_frelu.'):
            yield node.module.removeprefix('timm_frelu.')
        elif isinstance(node, ast.Import):
            yield from (a.name.removeprefix('timm_frelu.') for a in node.names if a.name.startswith('timm_frelu.'))


def test_the_library_imports_nothing_from_the_tooling():
    files = [PACKAGE / '__init__.py', *(f for sub in LIBRARY for f in (PACKAGE / sub).rglob('*.py'))]
    assert len(files) > 10
    crossings = {f'{f.relative_to(REPO)} imports {module}' for f in files for module in _imported_modules(f)
                 if module.split('.')[0] not in (*LIBRARY, *SHARED)}
    assert not crossings


def test_importing_the_package_loads_the_library_alone():
    loaded = subprocess.run(
        [sys.executable, '-c', 'import sys, timm_frelu; print(" ".join(m for m in sys.modules if m.startswith("timm_frelu")))'],
        capture_output=True, text=True, check=True).stdout.split()
    assert 'timm_frelu.models.resnet' in loaded and 'timm_frelu.pretrained.weights' in loaded
    assert not [m for m in loaded if m.split('.')[1:2] and m.split('.')[1] in TOOLING]


def test_the_folders_and_flat_modules_name_their_half():
    flat = sorted(p.stem for p in PACKAGE.glob('*.py'))
    assert len(flat) <= 8, flat
    subpackages = sorted(p.parent.name for p in PACKAGE.glob('*/__init__.py'))
    assert subpackages == sorted([*LIBRARY, *(t for t in TOOLING if (PACKAGE / t).is_dir())])
    assert set(flat) == {'__init__', *SHARED, *(t for t in TOOLING if (PACKAGE / f'{t}.py').is_file())}
