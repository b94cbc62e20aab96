"""Training-step time and memory against sequence length: the linear recurrences in each scan
mode beside the LSTM and GRU, all measured in the same run.

    python -m benchmarks.linear_scan [--lengths 28,196,784,3136] [--rounds 3] [--plot PNG]

For each T: the real `train.train_step` (batch 64, 128 input features, hidden 128, one layer,
10 classes from the last step, Adam) of lstm and gru (their step in a loop) and of mingru,
minlstm, lru and rglru in scan_mode "sequential", "chunked" and "parallel" (and mingru and
minlstm in "log", the paper's log-space form), compiled ahead of time, then timed in
interleaved rounds (median). Prints ms per step, its ratio to the LSTM's at the same T (> 1:
faster than the LSTM), the step's matmul GFLOP and the rate they ran at, XLA's temp memory
(`memory_analysis()`, the activations kept for the backward pass) and the compile time;
`--plot` draws ms and memory against T. What "auto" picks on this backend is printed first.

Why the matmul FLOPs (`matmul_flops`): every weight matrix of these cells multiplies one
[batch, rows] slice per time step (inside the loop for the LSTM and GRU, as one [T*batch, rows]
product for the linear cells). The LSTM's FLOPs over a cell's are the speed-up that cell would
show if both ran at the same FLOP rate: at D = H, 5.0 for minGRU, 10/3 for minLSTM and the
RG-LRU, 5/3 for the LRU and 4/3 for the GRU (the LSTM's and GRU's recurrent weights need an
input gradient, the linear cells' input projections do not). A cell below its ratio spends its
extra time outside the matmuls (elementwise passes, the scan).
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks import common

CLASSIC = ("lstm", "gru")
LINEAR = ("mingru", "minlstm", "lru", "rglru")
MODES = ("sequential", "chunked", "parallel", "log")
BATCH, FEATURES, HIDDEN = 64, 128, 128


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="28,196,784,3136")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--cells", default=",".join(CLASSIC + LINEAR))
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--plot", default="", help="write a PNG of ms and memory against T")
  args = parser.parse_args()
  from rnn_jax import cli
  cli.restart_with_malloc_tunables()  # As launch.py and rnn_jax.ablate: the same for every cell.
  cli.setup_process()
  import jax
  import numpy as np
  from rnn_jax import cells, models, recurrent

  rng = np.random.default_rng(0)
  print(f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}; jax {jax.__version__}; "
        f"scan_mode 'auto' = {recurrent.resolve_scan_mode(cells.get('mingru'), 'auto')!r}")
  print(f"batch {BATCH}, {FEATURES} features, hidden {HIDDEN}; median of {args.rounds} rounds")
  print("| T | cell | scan mode | ms / step | LSTM ms / this | matmul GFLOP (LSTM's / this) | "
        "GFLOP/s | XLA temp MiB | compile s |\n|---|---|---|---|---|---|---|---|---|")
  rows = []
  for steps in [int(t) for t in args.lengths.split(",")]:
    data = {"inputs": jax.device_put(rng.standard_normal((BATCH, steps, FEATURES),
                                                         dtype=np.float32)),
            "labels": jax.device_put(rng.integers(0, 10, BATCH).astype(np.int32))}
    runs = {}
    for cell in args.cells.split(","):
      for mode in (args.modes.split(",") if cell in LINEAR else ("step",)):
        if mode == "log" and cells.get(cell).linear.log_coefficients is None:
          continue  # Coefficients that can be negative or complex have no log-space form.
        model = models.SequenceModel(cell=cell, input_size=FEATURES, hidden_size=HIDDEN,
                                     num_outputs=10, scan_mode=mode)
        runner, state, compile_s = common.jit_runner(model, data)
        memory = runner.compiled(data).memory_analysis()
        state, metrics = runner.train(state, data)
        jax.block_until_ready(metrics)
        runs[cell, mode] = [runner, state, [], compile_s, memory.temp_size_in_bytes / 2 ** 20,
                            matmul_flops(cell, state.params, BATCH, steps)]
    repeats = max(1, int(round(3 * 784 / steps)))  # Steps per timing: ~0.5-2 s at each T.
    for _ in range(args.rounds):  # Interleaved, so a load change hits every entry alike.
      for holder in runs.values():
        start = time.perf_counter()
        for _ in range(repeats):
          holder[1], metrics = holder[0].train(holder[1], data)
        jax.block_until_ready(metrics)
        holder[2].append((time.perf_counter() - start) / repeats * 1e3)
    lstm = runs.get(("lstm", "step"))
    lstm_ms = statistics.median(lstm[2]) if lstm else None
    for (cell, mode), (_, _, times, compile_s, temp_mib, flops) in runs.items():
      ms = statistics.median(times)
      ratio = f"{lstm_ms / ms:.2f}x" if lstm_ms else "-"
      bound = f" ({lstm[5] / flops:.2f}x)" if lstm else ""
      rows.append((steps, cell, mode, ms, temp_mib))
      print(f"| {steps} | {cell} | {mode} | {ms:.1f} | {ratio} | {flops / 1e9:.2f}{bound} | "
            f"{flops / ms / 1e6:.0f} | {temp_mib:.1f} | {compile_s:.1f} |", flush=True)
  if args.plot:
    _plot(rows, args.plot)
    print(f"wrote {args.plot}")


def matmul_flops(cell_name: str, params: dict, batch: int, steps: int) -> int:
  """Matmul FLOPs of one training step of a one-layer plain `SequenceModel` on feature inputs
  (this benchmark's model), reading the last step.

  Each 2-D weight of the layer multiplies a [batch, rows] slice on every one of `steps` time
  steps, and the head once per example: 2 * rows * cols FLOPs per row forwards, as many for
  the weight gradient and, where the weight reads something differentiable (the state, the
  layer's output), as many again for that input's gradient. The weights that read the data
  itself ("w_x", "w_d") need no input gradient. A linear cell projects the whole sequence
  with `cells.affine`, whose bias gradient is a matrix-vector product (2 FLOPs per row and
  output); the LSTM's and GRU's biases are added step by step.
  """
  import math
  from rnn_jax import cells
  def flops(name, w, rows):
    passes = 4 if name in ("w_x", "w_d") else 6
    return passes * rows * math.prod(w.shape) if w.ndim == 2 else 0
  (layer,) = params["rnn"]
  if not set(layer) <= {"fwd", "bwd"} or "embed" in params:
    raise ValueError("matmul_flops counts a plain stack on feature inputs: a residual block's "
                     "or an embedding's matrices are not counted.")
  total = flops("w", params["head"]["w"], batch)
  for cell in layer.values():  # One direction ("fwd") or two.
    total += sum(flops(n, w, batch * steps) for n, w in cell.items())
    if cells.get(cell_name).linear is not None and "b" in cell:
      total += 2 * batch * steps * cell["b"].size
  return total


def _plot(rows, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  series = sorted({(cell, mode) for _, cell, mode, _, _ in rows},
                  key=lambda s: (s[0] not in CLASSIC, s))
  styles = {"step": "-", "sequential": "-", "chunked": "--", "parallel": ":", "log": "-."}
  colours = dict(zip(CLASSIC + LINEAR, plt.get_cmap("tab10").colors))  # One colour per cell.
  for cell, mode in series:
    points = [(t, ms, mib) for t, c, m, ms, mib in rows if (c, m) == (cell, mode)]
    ts = [p[0] for p in points]
    label = cell if mode == "step" else f"{cell} {mode}"
    width = 2.5 if cell in CLASSIC else 1.2
    for ax, values in zip(axes, ([p[1] for p in points], [p[2] for p in points])):
      ax.plot(ts, values, styles[mode], marker="o", linewidth=width, label=label,
              color=colours.get(cell))
  for ax, what in zip(axes, ("ms per training step", "XLA temp memory (MiB)")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(what)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=7, ncol=2)
  fig.suptitle(f"Training step vs T (batch {BATCH}, {FEATURES} features, hidden {HIDDEN})")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


if __name__ == "__main__":
  main()
