"""Learning curves of several single runs in one figure, against training seconds and epochs.

    python scripts/compare_runs.py --out docs/pixel_mnist_time_to_accuracy.png \
        --run "LSTM 128=runs/pixel_lstm_3ep" --run "IRNN 128=runs/pixel_irnn" \
        --run "RG-LRU 2x64=runs/pixel_rglru" [--title TEXT] [--smooth 10] [--metric loss]

Each `--run LABEL=WORKDIR` is a workdir written by `launch.py` (its metrics.jsonl, read as it
stands after the last resume; an ablation's run is DIR/<setting>/seed_<s>). Left: the
validation `--metric` (accuracy, or loss for regression such as the adding problem) after
each epoch against training seconds, the epochs' summed `epoch_time_s` (evaluation and pauses
between resumed sessions left out, as in the ablation plots). Middle: the training batch
metric, the mean of the last `--smooth` logged batches, against training seconds, which
within an epoch are interpolated from the step (the epoch's time spread evenly over its
steps). Right: the validation metric against epochs. Prints each run's epochs, training
seconds and last validation and test metric.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rnn_jax import reporting  # pylint: disable=g-import-not-at-top


def training_seconds(epochs: list[dict], steps: list[int]) -> np.ndarray:
  """Training seconds at each of `steps`: the summed `epoch_time_s` of the epochs before it,
  plus the step's share of its own epoch's time."""
  ends = [0] + [r["step"] for r in epochs]
  cumulative = np.cumsum([0.0] + [r["epoch_time_s"] for r in epochs])
  seconds = []
  for step in steps:
    e = min(np.searchsorted(ends, step, side="left"), len(epochs))  # The epoch holding step.
    e = max(e, 1)
    start, end = ends[e - 1], ends[e]
    share = (step - start) / max(end - start, 1)
    seconds.append(cumulative[e - 1] + share * epochs[e - 1]["epoch_time_s"])
  return np.asarray(seconds)


def trailing_mean(values: list[float], window: int) -> np.ndarray:
  """Mean of the last `window` values at each point (of all so far, for the first ones)."""
  sums = np.cumsum(np.concatenate([[0.0], values]))
  index = np.arange(1, len(values) + 1)
  start = np.maximum(index - window, 0)
  return (sums[index] - sums[start]) / (index - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", action="append", required=True, metavar="LABEL=WORKDIR")
  parser.add_argument("--out", required=True, help="PNG to write")
  parser.add_argument("--title", default="")
  parser.add_argument("--smooth", type=int, default=10)
  parser.add_argument("--metric", default="accuracy", choices=("accuracy", "loss"))
  args = parser.parse_args()
  if args.smooth < 1:
    raise SystemExit(f"--smooth must be >= 1 (logged batches averaged), got {args.smooth}.")
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(17, 4.5), layout="constrained")
  FigureCanvasAgg(fig)
  ax_val, ax_batch, ax_epoch = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
  for item in args.run:
    label, sep, workdir = item.partition("=")
    if not sep or not os.path.isdir(workdir):
      raise SystemExit(f"--run {item!r}: give LABEL=WORKDIR with an existing workdir.")
    epochs = reporting.read_metrics(workdir, "epoch")
    if not epochs:
      raise SystemExit(f"{workdir}: no finished epoch in its metrics.jsonl.")
    train = reporting.read_metrics(workdir, "train")
    evals = reporting.read_metrics(workdir, "eval")
    seconds = np.cumsum([r["epoch_time_s"] for r in epochs])
    # Epochs without an evaluation (eval_every_epochs > 1) have no point on the curve.
    evaluated = [i for i, r in enumerate(epochs) if f"validation_{args.metric}" in r]
    if not evaluated:
      raise SystemExit(f"{workdir}: no epoch record has a validation_{args.metric} (a run "
                       "with a validation split is needed; --metric loss for regression).")
    val = [epochs[i][f"validation_{args.metric}"] for i in evaluated]
    line, = ax_val.plot(seconds[evaluated], val, marker="o", label=label)
    ax_epoch.plot([epochs[i].get("epoch", i + 1) for i in evaluated], val, marker="o",
                  label=label, color=line.get_color())
    train = [r for r in train if r["step"] <= epochs[-1]["step"] and args.metric in r]
    if train:
      ax_batch.plot(training_seconds(epochs, [r["step"] for r in train]),
                    trailing_mean([r[args.metric] for r in train], args.smooth), label=label,
                    color=line.get_color())
    test = evals[-1].get(f"test_{args.metric}") if evals else None
    print(json.dumps({"run": label, "workdir": workdir, "epochs": len(epochs),
                      "training_s": round(float(seconds[-1]), 1),
                      f"validation_{args.metric}": val[-1], f"test_{args.metric}": test}))
  ax_val.set(title=f"Validation {args.metric} against time", xlabel="training seconds",
             ylabel=f"validation {args.metric}")
  ax_batch.set(title=f"Training batch {args.metric} (mean of {args.smooth} logged batches)",
               xlabel="training seconds", ylabel=args.metric)
  ax_epoch.set(title=f"Validation {args.metric} against epochs", xlabel="epoch",
               ylabel=f"validation {args.metric}")
  for ax in (ax_val, ax_batch, ax_epoch):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if args.title:
    fig.suptitle(args.title)
  fig.savefig(args.out, dpi=100)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
