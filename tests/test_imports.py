"""The import structure stays as docs/design.md draws it.

* No import loop inside alexnet_jax/ (imports inside functions count: a
  loop there is one a reader walks round as well).
* The library (core/) imports no command, no benchmark and no flags; the
  benchmarks/ package never imports a command (the command parses and
  dispatches, the benchmarks measure).
* No test module imports another test module: what tests share lives in
  tests/helpers/ or tests/conftest.py.
"""

import ast
import pathlib

from conftest import REPO

PACKAGE = REPO / 'alexnet_jax'
COMMANDS = {
    'alexnet_jax.benchmark',
    'alexnet_jax.cli',
    'alexnet_jax.convert',
    'alexnet_jax.data_stats',
    'alexnet_jax.evaluate',
    'alexnet_jax.main',
    'alexnet_jax.predict',
    'alexnet_jax.prepare_imagenet',
}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
  """The modules of `known` that the file imports, anywhere in it."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      # `from pkg import mod` imports pkg.mod when that is a module.
      names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
    else:
      continue
    out.update(n for n in names if n in known)
  return out


def _graph():
  files = {_module_name(p): p for p in PACKAGE.rglob('*.py')}
  known = set(files) | {'alexnet_jax.configs.paper'}
  return {name: _imports(path, known) - {name} for name, path in files.items()}


def _loops(graph):
  """The strongly connected components with more than one module."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_loop_inside_the_package():
  graph = _graph()
  assert len(graph) > 40
  assert _loops(graph) == []


def test_the_loop_finder_finds_a_loop():
  assert _loops({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [
      ['a', 'b', 'c']
  ]


def test_library_and_benchmarks_never_import_a_command():
  graph = _graph()
  for name, imported in graph.items():
    if name.startswith(('alexnet_jax.core', 'alexnet_jax.benchmarks')):
      assert not imported & COMMANDS, name
    if name.startswith('alexnet_jax.core'):
      assert not any(i.startswith('alexnet_jax.benchmarks') for i in imported)
  # The library reads no flags.
  for path in (PACKAGE / 'core').rglob('*.py'):
    text = path.read_text()
    assert 'from absl import flags' not in text, path
    assert 'argparse' not in text, path


def test_no_test_module_imports_another():
  tests = REPO / 'tests'
  test_modules = {p.stem for p in tests.glob('*.py')} - {'conftest'}
  files = [*tests.glob('*.py'), *(tests / 'helpers').glob('*.py')]
  assert len(files) > 30
  for path in files:
    imported = {n.split('.')[0] for n in _imports(path, test_modules)}
    assert imported == set(), f'{path.name} imports {sorted(imported)}'
