"""Every shipped config loads and passes validation, so a typo in one fails here, not in a run."""

import glob
import importlib
import os

import pytest

from rnn_jax import ablate, lm, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
               if not p.endswith(("__init__.py", "seeds.py")))


def _training_configs(config):
  """The training config(s) a config file describes: itself, or every point of a sweep."""
  if "sweep" not in config:
    return [config]
  return [ablate.run_config(config.base, overrides, seed)
          for _, overrides in ablate.settings(config) for seed in config.seeds]


@pytest.mark.parametrize("name", NAMES)
def test_config_validates(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  for point in _training_configs(config):
    (lm.validate if lm.is_lm_config(point) else train.validate)(point)


@pytest.mark.parametrize("name", [n for n in NAMES if "ablate" not in n and n != "base"])
def test_seeds_wraps_a_task_config(name):
  sweep = importlib.import_module("configs.seeds").get_config(name)
  assert sweep.seeds == [0, 1, 2] and not dict(sweep.sweep)
  (lm.validate if lm.is_lm_config(sweep.base) else train.validate)(sweep.base)


def test_seeds_without_a_task_says_how_to_name_one():
  with pytest.raises(ValueError, match="configs/seeds.py:mnist_lstm_best"):
    importlib.import_module("configs.seeds").get_config()


def test_modern_vs_classic_takes_cells_chrono_and_lengths():
  from configs import ablate_modern_vs_classic
  sweep = dict(ablate_modern_vs_classic.get_config("mingru,rglru,chrono=50,T=50,T=200").sweep)
  assert sweep == {"cell": ["mingru", "rglru"], "cell_options.chrono_init": [50],
                   "sequence_length": [50, 200]}
  assert dict(ablate_modern_vs_classic.get_config("gru").sweep)["sequence_length"] == [1000]
  with pytest.raises(ValueError, match="T=length"):
    ablate_modern_vs_classic.get_config("mingru,length=50")
