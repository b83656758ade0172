"""XLA flags alexnet_jax's programs set by default, before JAX starts.

XLA reads XLA_FLAGS once, when JAX first initialises its backend, so
`set_defaults()` must run before any device is used (main.py calls it on
import; the benchmark's workers before they build anything). A flag the
user already gives in XLA_FLAGS, with any value, is left as it is.

* --xla_cpu_copy_insertion_use_region_analysis=true: XLA:CPU otherwise
  copies every donated parameter at the start of a train step (fc6's is
  151 MB); with it the torchvision variant's step fits in less peak memory
  than PyTorch's (docs/performance.md). CPU only; other backends ignore it.
"""

import importlib.metadata
import os

DEFAULTS = ('--xla_cpu_copy_insertion_use_region_analysis=true',)
# XLA aborts on flags it does not know, and XLA's flags come and go between
# releases: defaults are set only for jaxlib releases they were tested with.
TESTED_JAXLIB = ('0.10.2',)


def _name(flag: str) -> str:
  return flag.split('=', 1)[0]


def set_defaults(environ=os.environ) -> list[str]:
  """Appends to XLA_FLAGS each default it does not set; returns those added."""
  try:
    jaxlib = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return []
  if jaxlib not in TESTED_JAXLIB:
    return []
  flags = environ.get('XLA_FLAGS', '')
  given = {_name(f) for f in flags.split()}
  added = [f for f in DEFAULTS if _name(f) not in given]
  if added:
    environ['XLA_FLAGS'] = ' '.join(flags.split() + added)
  return added
