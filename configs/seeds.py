"""Any task config, trained with 3 seeds that run together (jax.vmap), for mean ± std results.

  python -m rnn_jax.ablate --config=configs/seeds.py:mnist_lstm_best --workdir=runs/lstm_best

The part after ':' names a module in configs/. The seeds share one compiled program and each
keeps its own params, dropout key and data order (see rnn_jax/ablate.py); results.md in the
workdir holds test accuracy mean ± std. Add `--config.seeds="[0,1,2,3,4]"` for more seeds.
"""

import importlib

from rnn_jax import ablate


def get_config(task: str = ""):
  if not task:
    raise ValueError("Name the task config after a colon, e.g. "
                     "--config=configs/seeds.py:mnist_lstm_best")
  config = ablate.defaults()
  base = importlib.import_module(f"configs.{task}").get_config()
  base.progress_bar = False
  config.base = base
  config.sweep = {}
  config.seeds = [0, 1, 2]
  return config
