"""Experiments: ablation sweeps, the paper's CIFAR-10 figures, the demo.

Their dependencies beyond the package's own (matplotlib, for tables' plots
and figures) are the `experiments` extra: pip install -e '.[experiments]'.
"""

EXTRA = 'experiments'


def pyplot():
  """matplotlib.pyplot on the Agg backend, or one line naming the extra
  that installs it (and exit status 1)."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    raise SystemExit(
        f'error: {e.name} is not installed; the experiments need the '
        f"{EXTRA!r} extra: pip install -e '.[{EXTRA}]'"
    ) from None
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt
