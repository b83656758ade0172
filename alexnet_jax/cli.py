"""The commands' plumbing: every command in alexnet_jax/ reads its flags
with absl (the library ml_collections' config_flags builds on).

A command defines its flags in a `define_flags(flag_values)` function and
runs through `run_command` (or `run_absl`, for main, evaluate and predict,
whose flags live in absl's global FLAGS). As a program it is an absl app:
`--help` lists the command's own flags (also from a console script), and a
bad flag is one line (`parse_flags`). Called in-process with a list of
arguments (tests, other commands), its flags go into a fresh FlagValues,
so commands can run one after another in one process.
"""

import re
import sys

from absl import app
from absl import flags


def adopt_main(module_name: str):
  """Lets absl's --help describe `module_name` when run as a console script.

  absl prints __main__'s docstring and the flags registered under
  sys.argv[0]. Under `python -m` those are the command's own; from a
  console script __main__ is pip's wrapper, so --help would say nothing.
  """
  main, module = sys.modules['__main__'], sys.modules[module_name]
  if main is not module:
    main.__doc__ = module.__doc__


def define_checkpoint_flags(best_help: str, flag_values=flags.FLAGS):
  """--checkpoint and --best, as evaluate and predict read them."""
  flags.DEFINE_string(
      'checkpoint',
      None,
      'Training workdir, step directory or model export.',
      flag_values=flag_values,
  )
  flags.DEFINE_bool('best', False, best_help, flag_values=flag_values)


def _define_as_key_flags(define_flags):
  """Runs define_flags() and makes every flag it defined a key flag of the
  program (absl files them under sys.argv[0]), so --help lists them
  wherever they were defined."""
  before = set(flags.FLAGS)
  define_flags()
  for name in set(flags.FLAGS) - before:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def run_absl(module_name: str, main, define_flags, **kwargs):
  """Defines a command's flags in absl's FLAGS and runs it as an absl app
  (its flag errors in one line: `parse_flags`); kwargs go to `app.run`."""
  _define_as_key_flags(define_flags)
  adopt_main(module_name)
  kwargs.setdefault('flags_parser', parse_flags)
  app.run(main, **kwargs)


def run_command(module_name: str, define_flags, command, argv=None):
  """Runs `command(flag_values, args) -> exit status` with the flags that
  `define_flags(flag_values)` defines; args are the non-flag arguments.

  argv None: the program (sys.argv, as an absl app; exits). A list: its
  flags parsed into a fresh FlagValues; returns command's status.
  """
  if argv is None:
    run_absl(
        module_name,
        lambda argv: command(flags.FLAGS, argv[1:]),
        lambda: define_flags(flags.FLAGS),
    )
    return None
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  rest = parse_flags([module_name, *argv], flag_values)
  return command(flag_values, rest[1:])


def no_arguments(args):
  """For commands that take flags only: a stray argument is an error."""
  if args:
    raise SystemExit(
        f'error: unexpected argument {args[0]!r} (this command takes flags '
        'only; --helpshort lists them)'
    )


HELP_FLAGS = ('--help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')


def parse_flags(argv, flag_values=flags.FLAGS):
  """absl's flag parsing with its errors as one line (`--verbose`: whole).

  absl prints a flag error as a paragraph (a config file that raises, its
  whole traceback) plus a hint; this keeps the flag and the last line.
  """
  try:
    return flag_values(argv)
  except SystemExit as e:
    # absl's --help (and --helpshort, --helpfull) print the usage and exit
    # with status 1; asking for help is no error.
    if e.code == 1 and any(a.split('=')[0] in HELP_FLAGS for a in argv[1:]):
      raise SystemExit(0) from None
    raise
  except flags.Error as e:
    text = str(e)
    if '--verbose' in argv:
      print(text, file=sys.stderr)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:  # 'flag --x=v: Error whilst ...', ..., 'XError: m'
      flag = re.sub(r':? *Error whilst.*$', '', lines[0]).rstrip(':')
      text = f'{flag}: ' + re.sub(r'^[\w.]*(Error|Exception): ', '', lines[-1])
    required = re.search(
        r'Flag (--\w+) must have a value other than None', text
    )
    if required:
      text = f'{required.group(1)} is required'
    raise SystemExit(f'error: {text} (--helpshort lists the flags)') from None
