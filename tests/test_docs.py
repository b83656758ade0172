"""The README and docs/: links resolve, the README stays short, and CI runs
the README's own test command.

Offline and fast: only reads files (and asks git which files are tracked).
"""

import pathlib
import re
import shlex
import subprocess
import sys
import unicodedata

import pytest

from helpers import repo

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
DOCS = sorted((REPO / 'docs').glob('*.md'))
PAGES = [README] + DOCS
CONFIGS = sorted((REPO / 'configs').glob('*.py'))
MAX_README_LINES = 250

# [text](target) and ![alt](target); the target ends at the first space
# (an optional "title" may follow) or the closing parenthesis.
_LINK = re.compile(
    r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)'
)
_FENCE = re.compile(r'^(```|~~~).*?^\1[ \t]*$', re.S | re.M)
_INLINE_CODE = re.compile(r'`[^`\n]*`')
_HEADING = re.compile(r'^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$', re.M)
_HTML_ANCHOR = re.compile(r'<a\s+(?:name|id)="([^"]+)"', re.I)


def _rel(path):
  return path.relative_to(REPO).as_posix()


def _prose(text):
  """`text` without fenced code blocks and inline code spans."""
  return _INLINE_CODE.sub('', _FENCE.sub('', text))


def slug(heading):
  """GitHub's anchor for a heading: lower case, markup and punctuation
  dropped (letters, digits, '_', '-' and spaces kept), spaces -> '-'."""
  text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # links -> text
  text = text.replace('`', '').lower()
  kept = ''.join(
      ch for ch in text if ch in ' -_' or unicodedata.category(ch)[0] in 'LN'
  )
  return kept.replace(' ', '-')


def anchors(path):
  """Every anchor a markdown file defines (duplicates numbered as GitHub)."""
  text = _FENCE.sub('', path.read_text(encoding='utf-8'))
  seen, out = {}, set()
  for _, heading in _HEADING.findall(text):
    base = slug(heading)
    n = seen.get(base, 0)
    seen[base] = n + 1
    out.add(base if n == 0 else f'{base}-{n}')
  out.update(_HTML_ANCHOR.findall(text))
  return out


def links(path):
  """(line number, target) of each link in `path` outside code."""
  text = path.read_text(encoding='utf-8')
  # Blank the code out but keep the line numbers.
  blank = lambda m: re.sub(r'[^\n]', ' ', m.group(0))
  text = _INLINE_CODE.sub(blank, _FENCE.sub(blank, text))
  for m in _LINK.finditer(text):
    yield text.count('\n', 0, m.start()) + 1, m.group(1)


def _broken(page, target, tracked):
  """Why `target`, linked from `page`, does not resolve (None if it does)."""
  if re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I):
    return None  # http:, https:, mailto: ... are not checked here
  file_part, _, anchor = target.partition('#')
  dest = (page.parent / file_part).resolve() if file_part else page
  try:
    rel = _rel(dest)
  except ValueError:
    return f'{target} points outside the repository'
  if not dest.exists():
    return f'{target}: {rel} does not exist'
  if tracked is not None:
    is_tracked = (
        rel in tracked
        if dest.is_file()
        else any(f.startswith(rel + '/') for f in tracked)
    )
    if not is_tracked:
      return (
          f'{target}: {rel} is not tracked by git, so a clean checkout '
          'lacks it (git add it)'
      )
  if anchor:
    if dest.suffix != '.md':
      return f'{target}: anchors are checked in markdown files only'
    if anchor not in anchors(dest):
      return f'{target}: no heading in {rel} has the anchor #{anchor}'
  return None


def test_slug_follows_github():
  assert slug('Determinism, resuming, several hosts') == (
      'determinism-resuming-several-hosts'
  )
  assert slug('ImageNet (ILSVRC-2012)') == 'imagenet-ilsvrc-2012'
  assert slug('conv1 and the 224 input') == 'conv1-and-the-224-input'
  assert slug('The `data.*` fields') == 'the-data-fields'


def test_link_checker_reports_missing_files_and_anchors(tmp_path):
  page = REPO / 'docs' / 'x.md'  # never written: only its parent is used
  assert _broken(page, 'design.md', None) is None
  assert 'does not exist' in _broken(page, 'no_such_page.md', None)
  assert 'no heading' in _broken(page, 'design.md#no-such-heading', None)
  assert 'outside' in _broken(page, '../../elsewhere.md', None)
  assert _broken(page, 'https://example.com/x.md#y', None) is None


def test_docs_exist():
  assert README.is_file()
  names = {p.name for p in DOCS}
  for page in (
      'design.md',
      'faithfulness.md',
      'parallelism.md',
      'data.md',
      'training.md',
      'weights.md',
  ):
    assert page in names, f'docs/{page} is missing'


@pytest.mark.parametrize('page', PAGES, ids=_rel)
def test_every_relative_link_resolves(page):
  tracked = repo.tracked_files()
  problems = [
      f'{_rel(page)}:{line}: {why}'
      for line, target in links(page)
      if (why := _broken(page, target, tracked))
  ]
  assert not problems, '\n'.join(problems)


def test_readme_is_short():
  lines = README.read_text(encoding='utf-8').count('\n')
  assert lines <= MAX_README_LINES, (
      f'README.md has {lines} lines; keep it to {MAX_README_LINES} and put '
      'the detail in the docs/ page it belongs to'
  )


def _readme_commands():
  """The shell commands of the README's first code block."""
  block = re.search(
      r'^```bash\n(.*?)^```', README.read_text(encoding='utf-8'), re.S | re.M
  )
  assert block, 'README.md must open with a bash block of the two commands'
  return [
      line
      for line in block.group(1).splitlines()
      if line.strip() and not line.lstrip().startswith('#')
  ]


def test_readme_opens_with_the_two_commands_ci_runs():
  commands = _readme_commands()
  assert len(commands) == 2, commands
  install_and_smoke, install_and_test = commands
  ci = (REPO / '.ci' / 'run').read_text(encoding='utf-8')
  ci_commands = [
      line
      for line in ci.splitlines()
      if line.strip()
      and not line.startswith('#')
      and not line.startswith(('set ', 'cd '))
  ]
  assert ci_commands == [
      install_and_test
  ], ".ci/run must run the README's second command verbatim"
  assert '-m pytest' in install_and_test
  venv = 'python3 -m venv .venv && . .venv/bin/activate && '
  assert install_and_smoke.startswith(
      venv + 'pip install -r requirements-cpu.txt'
  )
  assert '--config=configs/smoke.py' in install_and_smoke


@pytest.mark.parametrize('path', PAGES + CONFIGS, ids=_rel)
def test_no_paths_outside_the_repository(path):
  text = path.read_text(encoding='utf-8')
  for banned in (
      '../shared',
      'PAPER.md',
      'DESIGN.md',
      'BENCHMARKS.md',
      '/work/',
  ):
    assert banned not in text, f'{_rel(path)} names {banned}'


# ----------------------------------------------- the README's quick tour --

TOUR_STEPS = 3  # the one change to the tour's commands: a shorter run


def _bash_lines(text):
  """Commands of the bash blocks of `text`: continuations joined, comments
  and blank lines dropped."""
  out = []
  for block in re.findall(r'^```bash\n(.*?)^```', text, re.S | re.M):
    joined = re.sub(r'\\\n\s*', ' ', block)
    for line in joined.splitlines():
      line = re.sub(r'\s+#.*$', '', line).strip()
      if line and not line.startswith('#'):
        out.append(line)
  return out


def _tour():
  """(command 1's workdir, the tour's smoke train, evaluate, predict lines)."""
  text = README.read_text(encoding='utf-8')
  first = _readme_commands()[0]
  workdir = re.search(r'--workdir=(\S+)', first).group(1)
  lines = _bash_lines(text)
  train_lines = [
      l
      for l in lines
      if l.startswith('python -m alexnet_jax.main --config=configs/smoke.py ')
      and '--config.parallel' not in l
  ]
  pick = lambda prefix: [l for l in lines if l.startswith(prefix)]
  return (
      workdir,
      train_lines,
      pick('python -m alexnet_jax.evaluate '),
      pick('python -m alexnet_jax.predict --checkpoint=' + workdir),
  )


def test_tour_uses_command_1s_workdir_and_files_that_exist():
  workdir, train_lines, evaluate, predict = _tour()
  assert train_lines and evaluate and predict
  for line in train_lines:
    assert f'--workdir={workdir}' in line, line
  for line in evaluate:
    assert f'--checkpoint={workdir}' in line, line
  for line in predict:
    images = [w for w in line.split() if not w.startswith('-')][3:]
    assert images, line
    for image in images:
      assert (REPO / image).is_file(), f'{image} (README) does not exist'
  training = (REPO / 'docs' / 'training.md').read_text(encoding='utf-8')
  for line in _bash_lines(training):
    if line.startswith('python -m alexnet_jax.predict'):
      for word in line.split()[3:]:
        if not word.startswith(('-', '[')):
          assert (REPO / word).is_file(), f'{word} (training.md) does not exist'


def test_tour_runs_as_written(tmp_path):
  """The tour's train, evaluate and predict lines, run as the README writes
  them, in a temporary directory, with only the step count shortened."""
  workdir, train_lines, evaluate, predict = _tour()
  here = str(tmp_path / pathlib.PurePath(workdir).name)

  def run(line, *extra):
    args = shlex.split(line.replace(workdir, here))
    assert args[:2] == ['python', '-m'], line
    proc = subprocess.run(
        [sys.executable, *args[1:], *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f'{line}\n{proc.stderr[-3000:]}'
    return proc

  run(train_lines[0], f'--config.train.num_train_steps={TOUR_STEPS}')
  assert (pathlib.Path(here) / 'results.json').is_file()
  out = run(evaluate[0]).stdout
  assert 'top-1' in out.lower() or 'top1' in out.lower(), out
  out = run(predict[0]).stdout
  assert 'cat' in out and 'ship' in out, out


def test_weights_page_and_notebook_agree_on_bvlc_alexnet():
  """docs/weights.md's address and SHA-1 of bvlc_alexnet.caffemodel are the
  ones the demo notebook downloads and checks."""
  import json  # pylint: disable=g-import-not-at-top

  notebook = json.loads((REPO / 'experiments' / 'demo.ipynb').read_text())
  code = '\n'.join(''.join(c['source']) for c in notebook['cells'])
  url = re.search(r"BVLC_ALEXNET_URL = '([^']+)'", code).group(1)
  sha1 = re.search(r"BVLC_ALEXNET_SHA1 = '([0-9a-f]{40})'", code).group(1)
  page = (REPO / 'docs' / 'weights.md').read_text(encoding='utf-8')
  row = next(
      l
      for l in page.splitlines()
      if l.startswith('| `bvlc_alexnet.caffemodel`')
  )
  assert url in row and sha1 in row
  row = next(
      l
      for l in page.splitlines()
      if l.startswith('| `alexnet-owt-7be5be79.pth`')
  )
  assert 'https://download.pytorch.org/models/alexnet-owt-7be5be79.pth' in row
  assert 'SHA-256 starts with `7be5be79`' in row
