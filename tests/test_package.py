"""The installed package outside the repository: the wheel is built, installed with --no-deps into a
fresh folder, and from an empty folder `yolact-deploy infer` segments the shipped sample and the
README's Python API example runs, with the installed code (the test environment gives the
dependencies). A user's own model.py, utils.py, ... beside them must not break either."""

import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ('yolact_torch', 'export', 'calib', 'plugins', 'engines', 'runtime')
# Files a user commonly keeps beside a script, each named like a module the toolkit could import.
USER_FILES = ('model.py', 'utils.py', 'data.py', 'eval.py', 'yolact.py')

pytestmark = pytest.mark.slow


def readme_api_example() -> str:
    """The runnable example of the README's "Python API" section (its first python block)."""
    section = ROOT.joinpath('README.md').read_text().split('\n## Python API\n', 1)[1].split('\n## ', 1)[0]
    return re.search(r'```python\n(.*?)```', section, re.S).group(1)


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """(target folder, its console scripts folder, the environment to run in) of the wheel,
    built from a copy of the sources (setuptools writes build/ and egg-info beside them)."""
    work = tmp_path_factory.mktemp('wheel')
    source = work / 'source'
    source.mkdir()
    for name in ('pyproject.toml', 'README.md'):
        (source / name).write_bytes((ROOT / name).read_bytes())
    for package in PACKAGES:
        subprocess.run(['cp', '-r', str(ROOT / package), str(source / package)], check=True)
    subprocess.run(['find', str(source), '-name', '__pycache__', '-prune', '-exec', 'rm', '-rf', '{}', '+'], check=True)
    wheels = work / 'dist'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', '--no-build-isolation',
                    '-w', str(wheels), str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob('yolact_deploy-*.whl')
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith('entry_points.txt'))
    assert {'runtime/assets/yolact_tiny_shapes.pth', 'runtime/assets/sample.jpg', 'runtime/api.py',
            'runtime/tensorrt/ptx/paste_masks.sm_80.fp16.ptx', 'runtime/tensorrt/ptx/paste_masks.sm_80.fp16.json'} <= names
    assert 'yolact-deploy = runtime.cli:main' in entry_points
    target = work / 'target'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', '--target', str(target),
                    str(wheel)], check=True, capture_output=True, timeout=600)
    env = {'PATH': f'{target / "bin"}:/usr/bin:/bin', 'HOME': str(work), 'OMP_NUM_THREADS': '2',
           'PYTHONPATH': f'{target}:{sysconfig.get_paths()["purelib"]}'}
    return target, env


def run_both(folder: Path, target: Path, env: dict) -> None:
    """`yolact-deploy infer` on the sample and the README example, run in `folder`; both must
    succeed with the code installed in `target`."""
    sample = target / 'runtime' / 'assets' / 'sample.jpg'
    cli = subprocess.run(['yolact-deploy', 'infer', str(sample), '--json', 'dets.json'], cwd=folder, env=env,
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert cv2.imread(str(folder / 'out' / 'sample.jpg')).shape == cv2.imread(str(sample)).shape
    assert (folder / 'dets.json').stat().st_size > 100
    (folder / 'example.py').write_text(readme_api_example() + 'print(runtime.__file__)\n')
    api = subprocess.run([sys.executable, 'example.py'], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=600)
    assert api.returncode == 0, api.stderr[-3000:]
    assert api.stdout.splitlines()[-1] == str(target / 'runtime' / '__init__.py')
    assert cv2.imread(str(folder / 'segmented.jpg')).shape == cv2.imread(str(sample)).shape


def test_the_wheel_works_from_an_empty_folder(installed, tmp_path):
    target, env = installed
    run_both(tmp_path, target, env)


def test_the_wheel_works_beside_the_users_own_modules(installed, tmp_path):
    target, env = installed
    for name in USER_FILES:
        (tmp_path / name).write_text('"""A user\'s own module, named like many are."""\n\nVALUE = 1\n')
    run_both(tmp_path, target, env)
