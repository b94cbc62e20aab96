"""The command line: `python launch.py` and the `rnn-jax-train` console script.

  python launch.py --config=configs/mnist_lstm.py --workdir=runs/mnist_lstm \
      [--config.hidden_size=256 ...]

Flags only: everything else happens in `train.train_and_evaluate(config, workdir)`.
"""

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


def run() -> None:
  app.run(main)
