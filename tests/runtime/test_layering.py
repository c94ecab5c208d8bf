"""The rule README "The pipeline" states: runtime/ is the bottom layer a deployment host installs alone.
It imports nothing from yolact_torch/, export/, calib/, engines/ or torch at module level; only the torch
backend imports the reference, lazily, when it loads a .pth."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from export.onnx_export import export_onnx
from yolact_torch.checkpoint import load_model
from runtime.assets import SAMPLE_IMAGE

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIME = ('torch', 'yolact_torch', 'export', 'calib', 'engines')
# Function-level imports of build-time packages that the rule allows, by file.
LAZY_ALLOWED = {'runtime/backends/torch_backend.py': {'torch', 'yolact_torch'}}


def imported_roots(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name.split('.')[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split('.')[0]]
    return []


def build_time_imports(path: Path) -> tuple[list[str], list[str]]:
    """(module-level, function-level) imports of BUILD_TIME packages in the file, as 'line: root'."""
    tree = ast.parse(path.read_text(), str(path))
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(child) for child in ast.walk(node) if child is not node)
    module_level, lazy = [], []
    for node in ast.walk(tree):
        for root in imported_roots(node):
            if root in BUILD_TIME:
                (lazy if id(node) in in_function else module_level).append(f'{node.lineno}: {root}')
    return module_level, lazy


def runtime_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / 'runtime').rglob('*.py'))


@pytest.mark.parametrize('name', runtime_files())
def test_runtime_module_imports_no_build_time_package(name):
    module_level, lazy = build_time_imports(ROOT / name)
    assert module_level == [], f'{name} imports build-time code at module level: {module_level}'
    allowed = LAZY_ALLOWED.get(name, set())
    assert [entry for entry in lazy if entry.split(': ')[1] not in allowed] == [], \
        f'{name} imports build-time code inside a function; only the torch backend may (README, "The pipeline")'


def test_the_scan_sees_both_kinds_of_import(tmp_path):
    sample = tmp_path / 'sample.py'
    sample.write_text('import numpy\nfrom yolact_torch.config import get_config\n\n\ndef load():\n    import torch\n')
    assert build_time_imports(sample) == (['2: yolact_torch'], ['6: torch'])


def test_infer_runs_an_onnx_model_with_the_build_time_packages_unimportable(tiny_checkpoint, tmp_path):
    model, cfg = load_model(tiny_checkpoint)
    onnx_path = export_onnx(model, cfg, tmp_path / 'tiny.onnx')
    image = SAMPLE_IMAGE
    blocked = ', '.join(repr(name) for name in BUILD_TIME)
    code = (f'import sys\n'
            f'for name in ({blocked}):\n'
            f'    sys.modules[name] = None  # an import of it now raises ImportError\n'
            f'from runtime.infer import main\n'
            f'status = main([{str(image)!r}, "--model", {str(onnx_path)!r}, "--out", {str(tmp_path / "out")!r}, '
            f'"--json", {str(tmp_path / "dets.json")!r}, "--score-thr", "0"])\n'
            f'loaded = sorted(n for n in sys.modules if n.split(".")[0] in ({blocked}) and sys.modules[n] is not None)\n'
            f'assert not loaded, loaded\n'
            f'sys.exit(status)\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'out' / 'sample.jpg').is_file() and (tmp_path / 'dets.json').is_file()
