"""Modern linear recurrences against the classic cells on the adding problem at T = 1000.

  python -m rnn_jax.ablate --config=configs/ablate_modern_vs_classic.py --workdir=runs/modern
  python -m rnn_jax.ablate --config=configs/ablate_modern_vs_classic.py:mingru,chrono=1000 \
      --workdir=runs/modern      # minGRU with chrono_init=1000

Cells rglru, mingru and minlstm (gates from the input only) beside lstm, gru and irnn, each
from its usual init, in the setting of ablate_adding.py: one layer of 64 units, 3 seeds
vmapped per cell, 2,000 updates of batch 50. The MSE baseline of predicting 1.0 is 1/6 ~=
0.167; `configs/ablate_adding.py` shows every classic cell stuck there from T = 500.

The argument: the cells, comma-separated, optionally `chrono=T_max`, the chrono_init of the
cells that take it (mingru, minlstm, lstm, gru), and `T=length` items (default T=1000), e.g.
`:mingru,minlstm,rglru,T=50,T=200,T=500` for the lengths of ablate_adding.py. The LRU is not
in the default list: the task needs the product of a value and its marker, and a state linear
in the inputs (LRU: s = sum of lambda^k B x) cannot form it; it needs a block with an MLP
before its recurrence (`block="residual"`, two layers), not run at T = 1000 here. minGRU,
minLSTM and RG-LRU multiply input gates by input values, so one layer can. Expected (2 CPU
cores): lstm, gru,
mingru, minlstm and rglru from their usual inits stay at the 0.167 baseline after 2,000
updates (12-23 min per cell, 3 seeds together, with other jobs on the CPU; the IRNN was not
run at T = 1000); `:mingru,chrono=1000` with `--config.base.num_epochs=40` (8,000 updates,
~25 min alone at the measured 38 s per 200) reaches test MSE 0.0058 +- 0.0019;
`:lstm,gru,chrono=1000` with `--config.base.num_epochs=20` (4,000 updates, ~15 min for the
LSTM and ~10 for the GRU at their rates alone) reaches 0.0051 +- 0.0025 (LSTM) and
0.0020 +- 0.0007 (GRU): given the init, sooner. The measured table, its command and
runtime are in docs/results.md; records hold training seconds, so the learning curves are
drawn against time as well as epochs.
"""

from configs import ablate_adding

CELLS = ("lstm", "gru", "irnn", "mingru", "minlstm", "rglru")


def get_config(arg: str = ",".join(CELLS)):
  items = arg.split(",")
  cells = [c for c in items if "=" not in c]
  chrono = [int(c.split("=")[1]) for c in items if c.startswith("chrono=")]
  lengths = [int(c.split("=")[1]) for c in items if c.startswith("T=")] or [1000]
  unknown = [c for c in items if "=" in c and not c.startswith(("chrono=", "T="))]
  if unknown:
    raise ValueError(f"Unknown item(s) {unknown} in '{arg}': give cell names, 'chrono=T_max' "
                     "and 'T=length' items, e.g. ':mingru,rglru,T=50,T=200'.")
  config = ablate_adding.get_config()
  del config["sweep"]  # Its dict type would refuse the tuple of pairs below.
  # Tuple of pairs: a dotted field name cannot be a ConfigDict key.
  sweep = [("cell", cells)] + [("cell_options.chrono_init", chrono)] * bool(chrono)
  config.sweep = tuple(sweep + [("sequence_length", lengths)])
  return config
