"""Modern linear recurrences against the classic cells on the adding problem at T = 1000.

  python -m rnn_jax.ablate --config=configs/ablate_modern_vs_classic.py --workdir=runs/modern
  python -m rnn_jax.ablate --config=configs/ablate_modern_vs_classic.py:mingru,minlstm,1000 \
      --workdir=runs/modern      # the same cells with chrono_init=1000

Cells rglru, mingru and minlstm (gates from the input only) beside lstm, gru and irnn, each
from its usual init, in the setting of ablate_adding.py: one layer of 64 units, 3 seeds
vmapped per cell, 2,000 updates of batch 50. The MSE baseline of predicting 1.0 is 1/6 ~=
0.167; `configs/ablate_adding.py` shows every classic cell stuck there from T = 500.

The arguments: the cells (comma-separated), and a chrono_init T_max (0 = off) for cells that
take it (mingru, minlstm, lstm, gru). The LRU is not in the default list: the task needs the
product of a value and its marker, and a state linear in the inputs (LRU: s = sum of
lambda^k B x) cannot form it; it needs a block with an MLP before its recurrence
(`block="residual"`, two layers), which costs ~5x the budget here. minGRU, minLSTM and RG-LRU
multiply input gates by input values, so one layer can. The measured table, its command and
runtime are in docs/results.md; records hold training seconds, so the learning curves are
drawn against time as well as epochs.
"""

from configs import ablate_adding

CELLS = ("lstm", "gru", "irnn", "mingru", "minlstm", "rglru")


def get_config(cells: str = ",".join(CELLS), chrono_init: int = 0,
               sequence_length: int = 1000):
  config = ablate_adding.get_config()
  del config["sweep"]  # Its dict type would refuse the tuple of pairs below.
  # Tuple of pairs: a dotted field name cannot be a ConfigDict key.
  sweep = [("cell", cells.split(","))]
  if int(chrono_init):
    sweep.append(("cell_options.chrono_init", [int(chrono_init)]))
  config.sweep = tuple(sweep + [("sequence_length", [int(sequence_length)])])
  return config
