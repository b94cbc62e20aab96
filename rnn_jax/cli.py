"""The command line: `python launch.py` and the `rnn-jax-train` console script.

  python launch.py --config=configs/mnist_lstm.py --workdir=runs/mnist_lstm \
      [--config.hidden_size=256 ...]
  python launch.py --config=configs/imdb_lm.py --workdir=runs/imdb_lm   # the language model

Flags and process setup only: a classifier config goes to `train.train_and_evaluate`, a
language-model config (one with the LM's fields) to `lm.train_lm`; both run the one loop of
`rnn_jax.engine`.

Process setup belongs here, at the entry point, not in the library (`setup_process`, which
the other entry points, `python -m rnn_jax.ablate` and benchmarks/, call too; a notebook may
call it before JAX starts):
- one XLA:CPU flag, `--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK dot
  fusions): the small recurrent matmuls of an RNN step run faster without those fusions on
  x86 CPUs (benchmarks/speed.py measures it; docs/performance.md has the figures);
- a log filter that keeps Orbax's warnings and errors but not its INFO lines (a dozen per save);
- on glibc, a restart with MALLOC_TUNABLES (`restart_with_malloc_tunables`, below), called
  by the commands that train or time long sequences (`launch.py`, `python -m rnn_jax.ablate`,
  `python -m benchmarks.linear_scan`) before JAX starts.
"""

import logging
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
  from rnn_jax import lm, train  # After flag parsing, so --help is instant.
  config = flags.FLAGS.config
  if lm.is_lm_config(config):
    lm.train_lm(config, flags.FLAGS.workdir)
  else:
    train.train_and_evaluate(config, flags.FLAGS.workdir)


XLA_CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="


def setup_process() -> None:
  """The process settings of every rnn_jax entry point (see the module docstring).

  The XLA flag is set only when all of these hold: XLA_FLAGS is not in the environment (any
  value the user set, even an empty one, is kept: `XLA_FLAGS= python ...` turns it off); no
  JAX backend has started yet (XLA reads XLA_FLAGS once, when its CPU backend starts, so it
  would silently not apply); and the installed jaxlib is one the flag is known to exist in
  (0.10.x: an unknown flag in XLA_FLAGS aborts the process). GPU and TPU ignore it.
  """
  if "XLA_FLAGS" not in os.environ and not _jax_backend_started() and _xla_flag_known():
    os.environ["XLA_FLAGS"] = XLA_CPU_FLAGS
  absl_logger = logging.getLogger("absl")
  if _quiet_orbax_info not in absl_logger.filters:
    absl_logger.addFilter(_quiet_orbax_info)


def _quiet_orbax_info(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def _jax_backend_started() -> bool:
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except Exception:  # A private API: if it moved, assume the worst.
    return True


def _xla_flag_known() -> bool:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    major, minor = (int(p) for p in metadata.version("jaxlib").split(".")[:2])
  except Exception:
    return False
  return (major, minor) == (0, 10)


# glibc hands every allocation above 32 MiB back to the OS on free and maps it afresh on the next
# malloc, so each training step of a long-sequence or IMDB-sized model page-faults through its
# large XLA temp buffers again: keeping freed memory in the process avoids those page faults
# (docs/performance.md has the counts). That holds only for the main heap: an allocation made on
# another thread (XLA's) that exceeds glibc's per-thread heap (64 MiB) is still mapped afresh
# each time, one fault per 4 KiB page, so `hugetlb=1` asks for transparent huge pages on such
# mappings (2 MiB per fault; ignored where the kernel or glibc lacks them). glibc reads this
# only at process start, hence the restart below.
MALLOC_TUNABLES = ("glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295:"
                   "glibc.malloc.hugetlb=1")


def restart_with_malloc_tunables() -> None:
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
  restart_with_malloc_tunables()
  setup_process()
  app.run(main, flags_parser=parse_flags)
