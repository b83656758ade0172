"""Checks that the demo notebook's install cell resolves on Colab, per kind.

    python -m experiments.colab.resolve [--out experiments/results/colab]

For each runtime kind (cpu, gpu, tpu) it runs `pip install --dry-run
--report` for what the install cell installs (its JAX_FOR[kind], TensorFlow
at the floor, the package's other dependencies at requirements.txt's pins,
the demo extra), as Colab's Python 3.12 on x86-64 Linux would, with the
packages the cell keeps (numpy, torch, torchvision) constrained to the
versions of a stated Colab runtime (COLAB below). Writes, per kind, the
report's resolved versions and a summary table. Needs PyPI; the `promise`
package (an sdist only) is built into a local wheel first.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / 'experiments' / 'demo.ipynb'
# googlecolab/backend-info, pip-freeze.gpu.txt at commit 03a89033b7dd (the
# GPU runtime's `pip freeze`; Python 3.12 wheels): what the cell keeps or
# replaces.
COLAB = {
    'source': 'googlecolab/backend-info pip-freeze.gpu.txt @ 03a89033b7dd',
    'python': '3.12',
    'numpy': '2.0.2',
    'torch': '2.11.0',
    'torchvision': '0.26.0',
    'jax': '0.7.2',
    'tensorflow': '2.20.0',
}
PLATFORMS = (
    'manylinux2014_x86_64',
    'manylinux_2_17_x86_64',
    'manylinux_2_24_x86_64',
    'manylinux_2_27_x86_64',
    'manylinux_2_28_x86_64',
    'manylinux_2_31_x86_64',
    'manylinux_2_34_x86_64',
    'manylinux_2_35_x86_64',
    'linux_x86_64',
)
SHOWN = (
    'jax',
    'jaxlib',
    'jax-cuda12-plugin',
    'libtpu',
    'tensorflow',
    'numpy',
    'flax',
    'orbax-checkpoint',
    'protobuf',
    'matplotlib',
)


def install_cell():
  """The install cell's names (JAX_FOR, TENSORFLOW, ...), executed without
  its last lines (which would install)."""
  cells = json.loads(NOTEBOOK.read_text())['cells']
  sources = [''.join(c['source']) for c in cells if c['cell_type'] == 'code']
  source = next(s for s in sources if 'ALEXNET_JAX_REPO =' in s)
  source = source.split('\nKIND = runtime_kind()')[0]
  namespace = {}
  exec(source, namespace)  # pylint: disable=exec-used
  return namespace


def requirements(kind, cell):
  pins = [
      l.strip()
      for l in (REPO / 'requirements.txt').read_text().splitlines()
      if l.strip() and not l.startswith('#')
  ]
  rest = [
      p
      for p in pins
      if re.split(r'[<>=]', p)[0] not in ('jax', 'jaxlib', 'tensorflow-cpu')
  ]
  return [
      cell['JAX_FOR'][kind],
      f"tensorflow=={cell['TENSORFLOW']}",  # Colab has tensorflow, not -cpu
      *rest,
      'matplotlib',
      'ipykernel',
  ]


def resolve(kind, cell, work):
  kept = work / 'kept.txt'
  kept.write_text(''.join(f'{n}=={COLAB[n]}\n' for n in cell['KEEP']))
  report = work / f'{kind}.json'
  platforms = [a for p in PLATFORMS for a in ('--platform', p)]
  command = [
      sys.executable,
      '-m',
      'pip',
      'install',
      '--dry-run',
      '--quiet',
      '--ignore-installed',
      '--report',
      str(report),
      '--python-version',
      COLAB['python'],
      *platforms,
      '--implementation',
      'cp',
      '--only-binary=:all:',
      '--find-links',
      str(work / 'wheels'),
      '--target',
      str(work / 'target'),
      '-c',
      str(kept),
      *requirements(kind, cell),
  ]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode:
    return command, None, result.stderr[-2000:]
  installed = json.loads(report.read_text())['install']
  return (
      command,
      {
          i['metadata']['name'].lower(): i['metadata']['version']
          for i in installed
      },
      None,
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=str(REPO / 'experiments/results/colab'))
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  cell = install_cell()
  rows, failed = [], []
  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(tmp)
    subprocess.run(
        [
            sys.executable,
            '-m',
            'pip',
            'wheel',
            '--no-deps',
            '-q',
            '-w',
            str(work / 'wheels'),
            'promise==2.3',
        ],
        check=True,
    )
    for kind in ('cpu', 'gpu', 'tpu'):
      command, versions, error = resolve(kind, cell, work)
      shown = ' '.join(
          a if not a.startswith(str(work)) else '<tmp>' for a in command[1:]
      )
      record = dict(
          kind=kind, colab=COLAB, command=shown, error=error, resolved=versions
      )
      (out / f'{kind}.json').write_text(json.dumps(record, indent=1) + '\n')
      if error:
        failed.append(kind)
        rows.append(f'| {kind} | does not resolve: {error.splitlines()[-1]} |')
        continue
      rows.append(
          f'| {kind} | '
          + ', '.join(f'{k} {versions[k]}' for k in SHOWN if k in versions)
          + f' ({len(versions)} packages) |'
      )
  table = (
      f'Colab runtime stated: {COLAB["source"]}: Python {COLAB["python"]}, '
      f'numpy {COLAB["numpy"]}, torch {COLAB["torch"]} (kept); jax '
      f'{COLAB["jax"]}, tensorflow {COLAB["tensorflow"]} (replaced).\n\n'
      '| kind | resolved by pip install --dry-run --report |\n|---|---|\n'
      + '\n'.join(rows)
      + '\n'
  )
  (out / 'table.md').write_text(table)
  print(table)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
