"""Split names as TFDS spells them: NAME, NAME[a:b] or NAME[a%:b%].

Every source reads them the same way (input_pipeline, folder_source, and the
checks of train and evaluate); TFDS slices its own splits natively.
"""

import re

_SLICE = re.compile(
    r'^(?P<name>[\w-]+)(\[(?P<lo>-?\d+%?)?:(?P<hi>-?\d+%?)?\])?$'
)


def check_split(split, sizes):
  """The split's name; ValueError if `split` is not NAME, NAME[a:b] or
  NAME[a%:b%] of a split in `sizes` (which is not asked for a size)."""
  match = _SLICE.match(split)
  if not match:
    raise ValueError(
        f'split {split!r} is not accepted; use NAME, NAME[a:b] '
        'or NAME[a%:b%] (e.g. train[:90%])'
    )
  name = match['name']
  if name not in sizes:
    raise ValueError(
        f'split {name!r} does not exist; the dataset has {sorted(sizes)}'
    )
  return match


def parse_split(split, sizes):
  """'train', 'train[:1000]' or 'train[10%:]' -> (name, start, stop), as
  TFDS slices splits (percentages round to the closest example)."""
  match = check_split(split, sizes)
  name = match['name']
  n = sizes[name]

  def bound(text, default):
    if text is None:
      return default
    if text.endswith('%'):
      value = round(int(text[:-1]) * n / 100)
    else:
      value = int(text)
    return max(0, min(n, value + n if value < 0 else value))

  return name, bound(match['lo'], 0), bound(match['hi'], n)
