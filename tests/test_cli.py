"""Command lines: main's config handling, evaluate and predict, and what
they print (the answer, one line per bad input, no third-party notices).

evaluate/predict run on a model export whose fc8 bias makes 'cat' win by a
wide margin, so their answers are known without training: every image is
called a cat, and the top-1 error on the embedded test split (34 cats of
340 images) is exactly 0.9.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from alexnet_jax import cli
from alexnet_jax import main as main_lib
from alexnet_jax import predict
from alexnet_jax.configs import ablations
from alexnet_jax.configs import cifar10
from alexnet_jax.configs import smoke
from alexnet_jax.core import checkpoint
from alexnet_jax.core import config_checks
from alexnet_jax.core import console
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import model as model_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = pathlib.Path(smoke.sample_root())
CAT = 3


# What TensorFlow and JAX print on every start unless silenced.
NOISE = (
    'oneDNN custom operations',
    'absl::InitializeLog',
    'Unable to initialize backend',
    '[Hyperparameters]',
)


def _run(args, cwd=REPO, timeout=300, env=None):
  return subprocess.run(
      [sys.executable, '-m'] + args,
      cwd=cwd,
      capture_output=True,
      text=True,
      timeout=timeout,
      env=env,
  )


def _one_device_env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # conftest's four simulated devices
  return env


@pytest.fixture(scope='module')
def export(tmp_path_factory):
  config = smoke.get_config()
  config.model.width_scale = 0.0625
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: (0.01 * rng.normal(size=s.shape)).astype(s.dtype),
      checkpoint.abstract_params(config),
  )
  params['fc8']['bias'][CAT] = 50.0
  out = tmp_path_factory.mktemp('cli') / 'export'
  info = input_pipeline.get_info(config)
  checkpoint.save_model(
      out,
      config=config,
      variables={'params': params},
      preprocessing=input_pipeline.preprocessing_from_config(config),
      class_names=info.class_names,
  )
  return out


def test_unknown_config_field_is_named():
  r = _run(
      [
          'alexnet_jax.main',
          '--config=configs/smoke.py',
          '--workdir=/nonexistent',
          '--config.optim.lrr=0.1',
      ]
  )
  assert r.returncode != 0
  assert 'config.optim.lrr does not exist' in r.stderr
  assert 'lr' in r.stderr.split('fields of config.optim:')[1]


def test_bad_value_fails_before_any_work(tmp_path):
  workdir = tmp_path / 'wd'
  # Run from another directory: configs/smoke.py resolves to the installed
  # package's copy.
  r = _run(
      [
          'alexnet_jax.main',
          '--config=configs/smoke.py',
          f'--workdir={workdir}',
          '--config.optim.schedule=cosin',
      ],
      cwd=tmp_path,
  )
  assert r.returncode == 1
  assert (
      "config.optim.schedule='cosin' is not accepted; use one of "
      "'plateau', 'step', 'cosine', 'constant'"
  ) in r.stderr
  assert not workdir.exists()


@pytest.mark.parametrize(
    'args, want',
    [
        (
            ['--config=configs/smok.py'],
            'error: --config=configs/smok.py: no such file (configs/ has '
            'ablations.py, cifar10.py, figure1.py, lrn_cifar.py, paper.py, '
            'paper_cifar224.py, smoke.py); did you mean configs/smoke.py?',
        ),
        (
            ['--config=configs/ablations.py:cifar10/lrn'],
            'error: flag --config=configs/ablations.py:cifar10/lrn: '
            'configs/ablations.py:cifar10/lrn is not BASE/VARIANT',
        ),
        (
            ['--config=configs/smoke.py', '--config.data.name=cifar11'],
            "error: config.data.name='cifar11' is not a TFDS dataset (close: ",
        ),
        (
            ['--config=configs/smoke.py', '--config.parallel.mesh.model=2'],
            'error: config.parallel.mesh.model=2 does not divide the 1 devices '
            'present (cpu): set config.parallel.cpu_devices=2',
        ),
        (
            [
                '--config=configs/smoke.py',
                '--config.parallel.mesh.model=2',
                '--verbose',
            ],
            'Traceback',
        ),
    ],
)
def test_a_bad_input_is_one_line(args, want, tmp_path):
  workdir = tmp_path / 'wd'
  r = _run(
      ['alexnet_jax.main', f'--workdir={workdir}'] + args, env=_one_device_env()
  )
  assert r.returncode == 1
  lines = r.stderr.splitlines()
  errors = [l for l in lines if l.startswith('error:')]
  assert len(errors) == 1, r.stderr  # printed once
  if '--verbose' in args:
    assert want in r.stderr
  else:
    assert errors[0].startswith(want), r.stderr
    assert 'Traceback' not in r.stderr
    # Before it at most the two start-up lines (JAX's devices, workdir).
    assert len(lines) <= 3, r.stderr
    assert not any(n in r.stderr for n in NOISE), r.stderr
  assert not workdir.exists()


def test_stderr_without_drops_only_the_notices(capfd):
  with console.stderr_without(('oneDNN custom operations',)):
    os.write(
        2,
        b'I0000 port.cc:153] oneDNN custom operations are on.\n'
        b'a real problem\n',
    )
    os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\n')
  assert capfd.readouterr().err == 'a real problem\n'


def test_exit_on_is_one_line_and_ctrl_c_is_130(capsys):
  with pytest.raises(SystemExit) as e:
    with console.exit_on(config_checks.ConfigError):
      raise config_checks.ConfigError('config.x=1 is not accepted')
  assert e.value.code == 'error: config.x=1 is not accepted'
  with pytest.raises(SystemExit) as e:
    with console.exit_on(config_checks.ConfigError):
      raise KeyboardInterrupt  # Ctrl-C before or after the training loop
  assert e.value.code == 130
  assert capsys.readouterr().err == 'interrupted\n'


def test_config_path_resolution(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  resolved = main_lib.resolve_config_path('configs/smoke.py')
  assert pathlib.Path(resolved).is_file()
  assert pathlib.Path(resolved).name == 'smoke.py'
  assert main_lib.resolve_config_path('configs/paper.py:arg').endswith(
      'paper.py:arg'
  )
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'smoke.py').write_text('')
  assert main_lib.resolve_config_path('configs/smoke.py') == 'configs/smoke.py'
  assert main_lib.resolve_config_path('nope.py') == 'nope.py'


def test_evaluate_cli_on_a_model_export(export, tmp_path):
  out = tmp_path / 'metrics.json'
  r = _run(
      [
          'alexnet_jax.evaluate',
          f'--checkpoint={export}',
          '--crops=10',
          '--batch_size=40',
          f'--output={out}',
      ]
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'top-1 error 90.00%' in r.stdout
  result = json.loads(out.read_text())
  assert result['examples'] == 340 and result['crops'] == 10
  assert result['split'] == 'test'
  assert result['top1_error'] == pytest.approx(0.9)
  assert '340/340' in r.stderr  # the progress bar
  # The answer (a sentence and its JSON), and little else.
  assert len(r.stdout.splitlines()) == 2, r.stdout
  other = [l for l in r.stderr.splitlines() if l.strip() and '/340 [' not in l]
  assert len(other) <= 1, r.stderr  # which checkpoint was loaded
  assert not any(n in r.stderr for n in NOISE), r.stderr


def test_predict_cli(export):
  images = [
      SAMPLE / 'test' / 'dog' / '0000.jpg',
      SAMPLE / 'test' / 'ship' / '0001.jpg',
  ]
  not_an_image = REPO / 'pyproject.toml'
  r = _run(
      ['alexnet_jax.predict', f'--checkpoint={export}', '--json']
      + [str(p) for p in images]
      + [str(not_an_image)]
  )
  # The readable images are still reported; the unreadable one is named.
  assert r.returncode == 1, r.stderr[-3000:]
  assert f"cannot read image '{not_an_image}'" in r.stderr
  assert '1 of 3 images could not be read' in r.stderr
  lines = [json.loads(l) for l in r.stdout.splitlines()]
  assert [l['image'] for l in lines] == [str(p) for p in images]
  # Besides the answer: the unreadable image, the count, at most one more.
  assert len(r.stderr.splitlines()) <= 3, r.stderr
  assert not any(n in r.stderr for n in NOISE), r.stderr
  for line in lines:
    top = line['top']
    assert len(top) == 5
    assert top[0]['name'] == 'cat' and top[0]['index'] == CAT
    assert top[0]['probability'] > 0.99
    probs = [t['probability'] for t in top]
    assert probs == sorted(probs, reverse=True)


def test_readable_imagenet_names():
  names = predict.readable_names(['n01440764', 'n01443537', 'odd'])
  assert names[0].startswith('tench') and names[0].endswith('(n01440764)')
  assert names[1].startswith('goldfish')
  assert names[2] == 'odd'
  assert predict.readable_names(['cat', 'dog']) == ['cat', 'dog']


@pytest.mark.parametrize('variant', sorted(ablations.VARIANTS))
def test_ablation_configs_change_one_thing_and_build(variant):
  config = ablations.get_config(f'cifar10/{variant}')
  config_checks.validate(config)
  base = checkpoint.config_to_dict(cifar10.get_config())
  diffs = checkpoint.config_differences(base, config, sections=None)
  want = {
      k: v
      for k, v in ablations.VARIANTS[variant].items()
      if checkpoint.flatten(base)[k] != v
  }
  assert len(diffs) == len(want)
  for field in want:
    assert any(d.startswith(field + ':') for d in diffs), (field, diffs)
  logits = jax.eval_shape(
      lambda p, x: model_lib.from_config(config.model).apply({'params': p}, x),
      checkpoint.abstract_params(config),
      jax.ShapeDtypeStruct((2, 64, 64, 3), np.float32),
  )
  assert logits.shape == (2, 10)


def test_ablation_config_argument_errors():
  with pytest.raises(ValueError, match='BASE/VARIANT'):
    ablations.get_config('cifar10/lrn')


def test_every_command_has_one_error_prefix():
  """Flag errors (cli.parse_flags) and runtime errors (console.exit_on)
  alike: `error: ...`, one line, whatever the command."""
  from alexnet_jax import convert as convert_cli  # pylint: disable=g-import-not-at-top
  from alexnet_jax import data_stats  # pylint: disable=g-import-not-at-top
  from alexnet_jax import prepare_imagenet  # pylint: disable=g-import-not-at-top

  messages = []
  for command in (convert_cli.main, data_stats.main, prepare_imagenet.main):
    with pytest.raises(SystemExit) as e:
      command(['--bogus'])
    messages.append(str(e.value.code))
  with pytest.raises(SystemExit) as e:
    convert_cli.main(
        ['--format=torchvision', '--input=/nonexistent.pth', '--output=/tmp/x']
    )
  messages.append(str(e.value.code))
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(['evaluate', '--bogus'])
  messages.append(str(e.value.code))
  for text in messages:
    assert text.startswith('error: ') and '\n' not in text, text
    assert 'convert:' not in text
