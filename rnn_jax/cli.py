"""The command line: `python launch.py` and the `rnn-jax-train` console script.

  python launch.py --config=configs/mnist_lstm.py --workdir=runs/mnist_lstm \
      [--config.hidden_size=256 ...]

Flags only: everything else happens in `train.train_and_evaluate(config, workdir)`.
"""

import os
import platform
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                lock_config=True)
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


def run() -> None:
  # absl's --help lists the main script's flags; ours are defined here, so adopt them there.
  for name in ("config", "workdir"):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  _reexec_with_malloc_tunables()
  app.run(main)
