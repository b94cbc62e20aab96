"""The command line: `python launch.py` and the `rnn-jax-train` console script.

  python launch.py --config=configs/mnist_lstm.py --workdir=runs/mnist_lstm \
      [--config.hidden_size=256 ...]

Flags only: everything else happens in `train.train_and_evaluate(config, workdir)`.
"""

import os
import platform
import re
import sys

from absl import app, flags
from ml_collections import config_flags



def define_flags(config_help: str = "Path to a config file in configs/.") -> None:
  """--config (a config file, with --config.<field>=<value> overrides) and --workdir.

  Defined when a command starts, not on import, so that importing this module (for
  `parse_flags`) defines nothing.
  """
  config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and summary; "
                      "running the same command again resumes from it.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  from rnn_jax import train  # After flag parsing, so --help is instant.
  train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


# glibc hands every allocation above 32 MiB back to the OS on free and maps it afresh on the next
# malloc, so each training step of a long-sequence or IMDB-sized model page-faults through its
# large XLA temp buffers again (~10k faults per step at 80 steps x batch 128): keeping freed
# memory in the process cuts those faults 2-20x and the step's CPU time by ~20%. glibc reads
# this only at process start, hence the re-exec below.
MALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"


def _reexec_with_malloc_tunables() -> None:
  """Restarts this command once with MALLOC_TUNABLES, unless GLIBC_TUNABLES is set already.

  Any GLIBC_TUNABLES value, even an empty one, is left alone (`GLIBC_TUNABLES= python
  launch.py ...` turns this off). Only for a real command line on glibc: never inside pytest,
  a notebook or `python -c`, where replacing the process would be wrong.
  """
  if "GLIBC_TUNABLES" in os.environ or platform.libc_ver()[0] != "glibc":
    return
  argv = getattr(sys, "orig_argv", None)
  if not argv or "-c" in argv[1:2] or not sys.argv or not sys.argv[0] or "pytest" in sys.modules:
    return
  env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable] + list(argv[1:]), env)
  except OSError:
    pass  # Carry on without the tunables rather than fail.


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with each mistake in a config file or override as one line
  (what, where, the fix) and exit status 2 instead of a traceback of the flags library."""
  config_file = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_file is None and "--config" in argv[:-1]:
    config_file = argv[argv.index("--config") + 1]
  try:
    rest = flags.FLAGS(argv)
    flags.FLAGS.config.keys()  # A file that failed to load fails only when first read.
    return rest
  except flags.Error as e:  # Unknown flag, a value of the wrong type, a missing flag.
    message = str(e)
  except SyntaxError as e:
    message = (f"The config file {config_file} has a syntax error at line {e.lineno}: "
               f"{e.msg}. Fix the file.")
  except (AttributeError, KeyError) as e:
    text = e
    while isinstance(text, BaseException):  # ConfigDict wraps a KeyError's message twice.
      text = text.args[0] if text.args else str(text)
    text = str(text)
    if "get_config" in text:
      message = (f"The config file {config_file} defines no get_config(). A config file "
                 "defines get_config() returning a ConfigDict (see configs/mnist_lstm.py).")
    else:
      field = re.search(r"'(\w+)'", text)
      hint = re.search(r'Did you mean "(\w+)"', text)
      flag = next((a.split("=", 1)[0] for a in argv
                   if field and a.startswith("--config.") and field.group(1) in a), "")
      message = (f"{flag or 'A --config override'} names no config field "
                 f"{field.group(1) if field else text!r}."
                 + (f" Did you mean {hint.group(1)!r}?" if hint else "")
                 + " rnn_jax/config.py lists every field.")
  except OSError as e:
    path = (config_file or "").split(":")[0]  # "file.py:argument" passes an argument.
    reason = ("does not exist" if not os.path.exists(path)
              else f"could not be read ({e.__cause__ or e})")
    message = (f"The config file {path} {reason}. Fix: --config=configs/<name>.py, e.g. "
               "configs/mnist_lstm.py.")
  sys.stderr.write(f"{os.path.basename(argv[0])}: {' '.join(message.split())}\n")
  sys.exit(2)


def run() -> None:
  define_flags()
  # absl's --help lists the main script's flags; ours are defined here, so adopt them there.
  for name in ("config", "workdir"):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  _reexec_with_malloc_tunables()
  app.run(main, flags_parser=parse_flags)
