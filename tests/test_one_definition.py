"""Guards against second copies (issue #12): each of these is defined once.

The tracked tree is searched as text, so a copy pasted back in fails here.
"""

import pathlib
import re
import subprocess

import pytest

from conftest import REPO
from helpers import repo

TEXT = (
    '.py',
    '.ipynb',
    '.md',
    '.sh',
    '.toml',
    '.txt',
    '.cfg',
    '.json',
    '.csv',
    '.jsonl',
    '.log',
    '',
)
# Raw output kept as it was written (a record of what ran, paths and all):
# run and benchmark logs.
RAW_LOG = ('.jsonl', '.log', '.txt')


def _tracked():
  names = repo.tracked_files()
  if names is None:
    skip = {'.git', '.venv', '__pycache__', '.pytest_cache'}
    names = [
        str(p.relative_to(REPO))
        for p in REPO.rglob('*')
        if p.is_file()
        and not skip & set(p.parts)
        and not any(part.endswith('.egg-info') for part in p.parts)
    ]
  return [
      n
      for n in names
      if (REPO / n).is_file() and pathlib.Path(n).suffix in TEXT
  ]


def _raw_log(name):
  p = pathlib.PurePosixPath(name)
  return (p.suffix in RAW_LOG and p.parts[0] == 'experiments') or (
      p.parts[:2] == ('experiments', 'results') and 'logs' in p.parts
  )


def _files_with(pattern, names):
  rx = re.compile(pattern)
  return sorted(
      n for n in names if rx.search((REPO / n).read_text(errors='replace'))
  )


# The one place tests find the shared data, and the tests that ban it.
SHARED_ALLOWED = {
    'tests/conftest.py',
    'tests/test_one_definition.py',
    'tests/test_docs.py',
}


def test_no_sibling_or_machine_paths():
  """Data is found through the data root (alexnet_jax.core.paths), never a
  `../shared` written into code, configs, docs, notebook or results; and no
  machine's own directories outside raw logs."""
  names = [n for n in _tracked() if not _raw_log(n)]
  assert len(names) > 50
  assert set(_files_with(r'\.\./shared', names)) <= SHARED_ALLOWED
  machine = [
      n
      for n in _files_with(r'(?<![\w.])/(work|home|Users)/', names)
      if n not in SHARED_ALLOWED
  ]
  assert machine == []


def test_pca_constants_live_in_configs_paper():
  code = [n for n in _tracked() if n.endswith(('.py', '.ipynb'))]
  assert _files_with(r'0\.2175', code) == ['alexnet_jax/configs/paper.py']


def test_one_builder_of_preprocessing_params():
  """Only preprocess.params_from_record turns a checkpoint's record into
  Params; library and commands never construct Params themselves."""
  code = [
      n for n in _tracked() if n.endswith('.py') and not n.startswith('tests/')
  ]
  assert _files_with(r'\bParams\(', code) == ['alexnet_jax/core/preprocess.py']


# The single definitions the house's passes made (issues #12 and #20): the
# pattern, and the one Python file (tests included) allowed to match it.
ONE_DEFINITION = {
    # The model's layer names, its LRN fields as keyword arguments and the
    # activation lookup.
    r'^LAYERS = \(': 'alexnet_jax/core/model.py',
    r'def lrn_kwargs\(': 'alexnet_jax/core/model.py',
    r'def activation_fn\(': 'alexnet_jax/core/model.py',
    r"nn\.relu if \w+ == 'relu'": 'alexnet_jax/core/model.py',
    # The commands' flag plumbing.
    r'def define_checkpoint_flags\(': 'alexnet_jax/cli.py',
    r'def run_absl\(': 'alexnet_jax/cli.py',
    r'def run_command\(': 'alexnet_jax/cli.py',
    r'def parse_flags\(': 'alexnet_jax/cli.py',
    # Checks and readers.
    r'def check_batch_splits\(': 'alexnet_jax/core/config_checks.py',
    r'def parse_split\(': 'alexnet_jax/core/splits.py',
    r'class FolderSource\b': 'alexnet_jax/core/folder_source.py',
    r'class _ArraysOnlyUnpickler\b': 'alexnet_jax/core/weight_files.py',
    r'def device_peak_tflops\(': 'alexnet_jax/benchmarks/device.py',
    # What the tests share (tests/helpers).
    r"^\s*'airplane',": 'tests/helpers/cifar10.py',
    r'def he_params\(': 'tests/helpers/tiny_model.py',
    r'def write_caffemodel\(': 'tests/helpers/caffe.py',
    r'def tiny_config\(': 'tests/helpers/smoke.py',
    r'FAKE_CPUS_C = ': 'tests/test_onednn.py',
}


@pytest.mark.parametrize('pattern', sorted(ONE_DEFINITION))
def test_single_definitions_stay_single(pattern):
  code = [
      n
      for n in _tracked()
      if n.endswith('.py') and n != 'tests/test_one_definition.py'
  ]
  found = _files_with(f'(?m){pattern}', code)
  assert found == [ONE_DEFINITION[pattern]]


def test_no_run_artefacts_tracked_and_they_are_ignored():
  """Checkpoints, TensorBoard events and workdirs stay out of git."""
  try:
    out = subprocess.run(
        ['git', 'ls-files'],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip('not a git checkout')
  for part in (
      'events.out.tfevents',
      '_CHECKPOINT_METADATA',
      '.ocdbt',
      'experiments/runs/',
      'workdir/',
      'checkpoints/',
  ):
    assert [n for n in out.splitlines() if part in n] == [], part
  for path in (
      'experiments/results/x/events.out.tfevents.1.v2',
      'experiments/results/x/checkpoints/100/state/manifest.ocdbt',
      'experiments/runs/figure1/relu/metrics.jsonl',
      'experiments/cifar10/workdir/config.json',
  ):
    ignored = subprocess.run(['git', 'check-ignore', '-q', path], cwd=REPO)
    assert ignored.returncode == 0, f'{path} is not git-ignored'
