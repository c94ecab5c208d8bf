"""yolact-deploy: every stage runs its `python -m` module's main with the same arguments; a stage whose
build-time packages are missing names the install profile; the table imports no stage up front."""

import importlib
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from runtime import cli
from runtime.assets import SAMPLE_IMAGE

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('name', sorted(cli.STAGES))
def test_every_stage_is_its_python_m_module_with_the_same_flags(name, capsys):
    stage = cli.STAGES[name]
    python_m = stage.python_m.removeprefix('python -m ')
    # The module `python -m` runs, or (runtime.bench) the one whose main its __main__ calls.
    assert stage.module in (python_m, f'{python_m}.__main__') or name == 'bench'
    with pytest.raises(SystemExit) as done:
        cli.main([name, '--help'])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith('usage:') and '--help' in help_text
    with pytest.raises(SystemExit):
        importlib.import_module(stage.module).main(['--help'])
    assert capsys.readouterr().out == help_text


def test_usage_lists_the_stages_and_bad_stages_exit_2(capsys):
    assert cli.main([]) == 2
    listed = capsys.readouterr().out
    assert all(f'  {name}' in listed for name in cli.STAGES)
    assert cli.main(['--help']) == 0
    assert cli.main(['segment', 'x.jpg']) == 2
    assert "unknown stage 'segment'" in capsys.readouterr().err


def test_infer_runs_on_the_shipped_sample_with_the_demo_model(tmp_path, capsys):
    assert cli.main(['infer', str(SAMPLE_IMAGE), '--out', str(tmp_path)]) == 0
    assert cv2.imread(str(tmp_path / 'sample.jpg')).shape == cv2.imread(str(SAMPLE_IMAGE)).shape


def test_a_stage_without_its_build_time_packages_names_the_profile():
    code = ('import sys\n'
            'sys.modules["torch"] = None  # an import of it now raises ImportError\n'
            'from runtime.cli import main\n'
            'sys.exit(main(["train", "--help"]))\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        'yolact-deploy train: error: it needs torch, which is not installed: pip install "yolact-deploy[build]"']
