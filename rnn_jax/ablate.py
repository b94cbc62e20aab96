"""Ablation sweeps: cells x seeds x any other config fields, with the seeds of one setting
trained together in one compiled program (jax.vmap over the train state), then tables and plots.

  python -m rnn_jax.ablate --config=configs/ablate_mnist_cells.py --workdir=runs/ablate_mnist

A sweep config (see `defaults()`) names a task config (`base`), the axes to sweep (`sweep`:
field -> values; dotted names reach into dicts, e.g. 'cell_options.forget_bias'), and `seeds`.
Every (setting, seed) is a normal resumable run directory, DIR/<setting>/seed_<s>, holding what
`train.train_and_evaluate` writes (config.json, metrics.jsonl, checkpoints/, summary.json,
plots/) plus diagnostics.json (gradient norm through time, of the whole carry, of the final
params on a fixed batch, and the memory horizon). Running the command again skips finished
runs (recomputing diagnostics.json from the last checkpoint when an older version wrote it)
and resumes the others; a run trained with a different config is refused, naming the
fields. To extend a finished sweep, raise its budget on the same workdir, e.g.
`--config.base.num_epochs=20` (constant learning rate only): every run resumes from its last
checkpoint and trains on, as if it had been started with the larger budget (the LM from the
carries saved in its checkpoint). A base config with the LM's fields (`lm.is_lm_config`)
makes a sweep of language models; any other, of classifiers.
DIR/results.md and DIR/results.csv hold mean +- std over seeds; DIR/plots/ the learning
curves, a summary bar chart and the gradient norm through time.

Vmapped seeds (`vmap_seeds=True`): each seed keeps its own params, optimizer state, dropout
key AND its own data (its task is loaded with its own seed, so its train order, and for
seed-dependent data such as the adding problem its examples, are exactly those of the
sequential run); the S batches of a step are stacked and the vmapped `train.train_step`
consumes them at once. So a vmapped run computes the same updates as `train_and_evaluate`
with that seed, up to float reassociation (tests/test_ablate.py checks the params agree).
Batches of different widths (IMDB length buckets) are right-padded to the widest, which the
masked scan ignores; left-padded token batches of different widths cannot be stacked: use
`length_buckets=()` or `vmap_seeds=False`. A group whose seeds stopped at different steps
resumes sequentially, each seed from its own checkpoint.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import logging
import math
import os
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from rnn_jax import checkpoints, config as config_lib, data, diagnostics, engine, lm, reporting
from rnn_jax import train, workdir as workdir_lib

def defaults() -> ml_collections.ConfigDict:
  """The fields of a sweep config, with their defaults."""
  c = ml_collections.ConfigDict()
  c.base = config_lib.defaults()  # The task config every run starts from.
  # c.sweep, set by each sweep config: {field: [values]}, or a tuple of (field, [values]) pairs
  # when a field name has dots (ConfigDict keys cannot). The runs are the product of the axes.
  c.seeds = [0, 1, 2]            # One run per seed and setting.
  c.vmap_seeds = True            # Train the seeds of a setting together (jax.vmap); else one by one.
  c.match_params = 0             # > 0: pick each setting's hidden_size so its parameter count is
                                 # closest to this (budget matching across cells); 0 = off.
  c.metrics = ("test_accuracy", "test_loss")  # summary.json fields tabulated (mean +- std).
  c.curve_metric = "validation_accuracy"  # Epoch metric for the learning-curve plot.
  c.horizon_fraction = 0.01      # memory_horizon threshold.
  c.diagnostics_examples = 256   # Examples in the fixed batch of the final diagnostics.
  c.on_mismatch = "refuse"       # A run dir trained with another config than its setting:
                                 # 'refuse' (error), or 'retrain' (move it aside, train anew).
  return c


# ----------------------------------------------------------------------------- settings

def settings(sweep: ml_collections.ConfigDict) -> list[tuple[str, dict[str, Any]]]:
  """[(name, {field: value})] for the product of the sweep axes, first axis slowest."""
  axes = sweep.get("sweep") or ()
  axes = [(k, list(v)) for k, v in (axes.items() if hasattr(axes, "items") else axes)]
  for key, values in axes:
    if not values:
      raise ValueError(f"sweep.{key} is empty; give it at least one value or remove it.")
  out = []
  for combo in itertools.product(*[values for _, values in axes]):
    overrides = dict(zip([k for k, _ in axes], combo))
    name = ",".join(f"{k}={_short(v)}" for k, v in overrides.items()) or "base"
    out.append((name, overrides))
  return out


def _short(value) -> str:
  return str(value).replace("/", "_").replace(" ", "")


def run_config(base: ml_collections.ConfigDict, overrides: dict[str, Any],
               seed: int) -> ml_collections.ConfigDict:
  """`base` with the setting's overrides (dotted names into dicts) and `seed`."""
  config = copy.deepcopy(base)
  with config.unlocked():
    for key, value in overrides.items():
      target = config
      *path, leaf = key.split(".")
      for part in path:
        target = target[part]
      if leaf not in target and not path:
        raise ValueError(f"sweep field {key!r} is not a config field; see rnn_jax/config.py.")
      target[leaf] = value
    config.seed = seed
  return config


def task_dims(config: ml_collections.ConfigDict) -> tuple[str, int, int]:
  """(input_kind, input_size, num_classes) of the config's task: from the dataset's `dims`
  (no data read), else from the loaded task."""
  if config.dataset in data.DIMS:
    return data.DIMS[config.dataset](config)
  task = data.load(config)
  return task.input_kind, task.input_size, task.num_classes


def count_params(config: ml_collections.ConfigDict) -> int:
  """Parameters of the model `config` describes (shapes only; nothing is initialised)."""
  kind, size, classes = task_dims(config)
  fake = data.Task(name="", input_kind=kind, seq_len=1, input_size=size, num_classes=classes,
                   splits={"train": {"x": np.zeros(1)}}, make_batch=None, batch_size=1,
                   eval_batch_size=1, seed=0, metadata={})
  model = train.build_model(config, fake)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))


def match_hidden_size(config: ml_collections.ConfigDict, target: int,
                      limit: int = 8192) -> int:
  """The hidden_size whose parameter count is closest to `target` (counts grow with it)."""
  def count(hidden):
    trial = copy.deepcopy(config)
    trial.hidden_size = hidden
    return count_params(trial)
  lo, hi = 1, limit
  while lo < hi:  # Smallest hidden with count >= target.
    mid = (lo + hi) // 2
    if count(mid) >= target:
      hi = mid
    else:
      lo = mid + 1
  if lo > 1 and abs(count(lo - 1) - target) <= abs(count(lo) - target):
    return lo - 1
  return lo


# ----------------------------------------------------------------------------- training

def train_seeds(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str], *,
                horizon_fraction: float = 0.01, diagnostics_examples: int = 256
                ) -> list[dict[str, Any]]:
  """Trains the configs (identical but for `seed`) together: one vmapped, compiled train step
  (`train.train_runs`), then each run's final diagnostics. Returns the summaries.

  Seeds whose checkpoints stopped at different steps resume one by one instead.
  """
  summaries = train.train_runs(configs, workdirs)
  if summaries is None:
    return [train_one(c, w, horizon_fraction=horizon_fraction,
                      diagnostics_examples=diagnostics_examples)
            for c, w in zip(configs, workdirs)]
  return [final_diagnostics(c, w, s, horizon_fraction=horizon_fraction,
                            diagnostics_examples=diagnostics_examples)
          for c, w, s in zip(configs, workdirs, summaries)]


def train_one(config: ml_collections.ConfigDict, workdir: str, *, horizon_fraction: float = 0.01,
              diagnostics_examples: int = 256) -> dict[str, Any]:
  """`train.train_and_evaluate`, then the final diagnostics from the latest checkpoint."""
  summary = train.train_and_evaluate(config, workdir)
  return final_diagnostics(config, workdir, summary, horizon_fraction=horizon_fraction,
                           diagnostics_examples=diagnostics_examples)


def final_diagnostics(config: ml_collections.ConfigDict, workdir: str, summary: dict[str, Any],
                      *, horizon_fraction: float = 0.01, diagnostics_examples: int = 256
                      ) -> dict[str, Any]:
  """diagnostics.json from the run's latest checkpoint (its final params); the summary's
  memory_horizon updated and saved. Returns the summary."""
  task = data.load(config, workdir)
  model = train.build_model(config, task)
  tx, _ = train.build_optimizer(config, 1)
  template = jax.eval_shape(lambda: train.create_train_state(model, tx, config.seed))
  with checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True) as ck:
    state, _ = ck.restore_latest(template)
  batch = train.diagnostics_batch(task, diagnostics_examples)
  record = diagnostics.make_diagnostics(model, batch, fraction=horizon_fraction)(state.params)
  path = os.path.join(workdir, "diagnostics.json")
  with open(path + ".tmp", "w") as f:
    json.dump(record, f)
  os.replace(path + ".tmp", path)
  summary["memory_horizon"] = record["memory_horizon"]
  reporting.write_summary(workdir, summary)
  return summary


def _stale_diagnostics(workdir: str) -> bool:
  """Finished before diagnostics measured the whole carry (h and the LSTM's c)."""
  path = os.path.join(workdir, "diagnostics.json")
  if not os.path.exists(path):
    return True
  with open(path) as f:
    return json.load(f).get("state") != "carry"


# ----------------------------------------------------------------------------- the sweep

def _finished_or_moved_aside(config: ml_collections.ConfigDict, workdir: str,
                             on_mismatch: str) -> bool:
  """`_finished`; a run of another config is refused, or with on_mismatch='retrain' moved
  to <workdir>.replaced-<time> (nothing is deleted) so that it is trained again."""
  if on_mismatch not in ("refuse", "retrain"):
    raise ValueError(f"on_mismatch={on_mismatch!r} is not one of 'refuse', 'retrain'.")
  try:
    return _finished(config, workdir)
  except engine.ResumeConflictError as e:
    if on_mismatch == "refuse":
      raise ValueError(f"{e} To train it again with this sweep's config instead (the old run "
                       "is moved aside, not deleted), add --config.on_mismatch=retrain.") from e
  aside = f"{workdir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
  with workdir_lib.lock(workdir):  # Never from under a run that is still training there.
    os.replace(workdir, aside)
  logging.warning("%s was trained with another config; moved to %s to train it again.",
                  workdir, aside)
  return False


def _finished(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Whether `workdir` holds the finished run `config` stands for.

  False for no run, or for a shorter run whose budget (num_epochs, or the LM's max_steps /
  max_tokens) `config` raises: resuming it extends it. Raises ValueError, naming the fields,
  when the run there was trained with another config (`train.check_resume_compatible`).
  """
  engine.check_resume_compatible(workdir, config)
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    recorded = json.load(f)["config"]
  wanted = json.loads(config.to_json_best_effort())
  return all(recorded.get(k) == wanted.get(k) for k in config_lib.BUDGET_FIELDS)


def run_dir(workdir: str, name: str, seed: int) -> str:
  return os.path.join(workdir, name, f"seed_{seed}")


def run_sweep(sweep: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Trains every unfinished (setting, seed), then writes the tables and plots. Returns rows."""
  language_model = lm.is_lm_config(sweep.base)  # Else a classifier (train.train_runs).
  os.makedirs(workdir, exist_ok=True)
  for name, overrides in settings(sweep):
    configs = [run_config(sweep.base, overrides, seed) for seed in sweep.seeds]
    if sweep.match_params > 0:
      hidden = match_hidden_size(configs[0], sweep.match_params)
      for c in configs:
        c.hidden_size = hidden
    dirs = [run_dir(workdir, name, seed) for seed in sweep.seeds]
    todo = [i for i, (c, d) in enumerate(zip(configs, dirs))
            if not _finished_or_moved_aside(c, d, sweep.on_mismatch)]
    kwargs = dict(horizon_fraction=sweep.horizon_fraction,
                  diagnostics_examples=sweep.diagnostics_examples)
    if not language_model:  # Finished runs from an older version: recompute.
      for i, d in enumerate(dirs):
        if i not in todo and _stale_diagnostics(d):
          print(f"== {name}: recomputing seed {sweep.seeds[i]}'s final diagnostics", flush=True)
          with open(os.path.join(d, "summary.json")) as f:
            final_diagnostics(configs[i], d, json.load(f), **kwargs)
    if not todo:
      logging.info("%s: all seeds finished; skipped.", name)
      continue
    print(f"== {name}: seeds {[sweep.seeds[i] for i in todo]}", flush=True)
    if language_model:
      for i in todo:
        lm.train_lm(configs[i], dirs[i])
    elif sweep.vmap_seeds and len(todo) > 1:
      train_seeds([configs[i] for i in todo], [dirs[i] for i in todo], **kwargs)
    else:
      for i in todo:
        train_one(configs[i], dirs[i], **kwargs)
  rows = collect(sweep, workdir)
  write_tables(rows, workdir, sweep.metrics)
  write_plots(sweep, workdir, rows)
  return rows


def _mean_std(values):
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  return float(np.mean(values)), float(np.std(values))


def collect(sweep: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """One row per setting: mean and std over its finished seeds of every tabulated number."""
  rows = []
  for name, overrides in settings(sweep):
    summaries = []
    for seed in sweep.seeds:
      path = os.path.join(run_dir(workdir, name, seed), "summary.json")
      if os.path.exists(path):
        with open(path) as f:
          summaries.append(json.load(f))
    if not summaries:
      continue
    row = {"setting": name, **{k: _short(v) for k, v in overrides.items()},
           "seeds": len(summaries)}
    fields = list(sweep.metrics) + ["num_params", "train_examples_per_s", "compile_time_s",
                                    "wall_time_s", "memory_horizon"]
    for field in fields:
      row[field], row[field + "_std"] = _mean_std([s.get(field) for s in summaries])
    rows.append(row)
  return rows


def _fmt(mean, std, digits=4):
  if mean is None:
    return "-"
  if std is None:
    return f"{mean:.{digits}g}"
  return f"{mean:.{digits}g} ± {std:.2g}"


def write_tables(rows: list[dict[str, Any]], workdir: str, metrics: Sequence[str]) -> None:
  """workdir/results.csv (means and stds in columns) and workdir/results.md (mean ± std)."""
  if not rows:
    return
  keys = list(rows[0])
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
  shown = list(metrics) + ["num_params", "train_examples_per_s", "compile_time_s",
                           "wall_time_s", "memory_horizon"]
  header = ["setting", "seeds"] + shown
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["setting"], str(row["seeds"])]
    for field in shown:
      digits = 4 if field in metrics else 3
      cells.append(_fmt(row[field], row[field + "_std"], digits))
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append("Mean ± std over seeds. train_examples_per_s: with vmapped seeds, the examples "
               "of all seeds of the setting per second; wall_time_s and compile_time_s are "
               "then the group's. memory_horizon: steps back from the last step where the "
               "gradient norm through time stays above the threshold fraction of its last value "
               "(final params, fixed batch).")
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def write_plots(sweep: ml_collections.ConfigDict, workdir: str,
                rows: list[dict[str, Any]]) -> list[str]:
  """learning_curves.png, summary.png and grad_norm_through_time.png under workdir/plots.

  The learning curves are drawn against epochs and against training seconds (the epochs'
  summed `epoch_time_s`: evaluation and pauses between resumed sessions left out; vmapped seeds
  train together, so it is the time of all seeds of the setting), for time to accuracy."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  out = os.path.join(workdir, "plots")
  os.makedirs(out, exist_ok=True)
  names = [row["setting"] for row in rows]
  paths = []

  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  palette = colormaps["tab10" if len(names) <= 10 else "tab20"].colors  # No repeated colour.

  def band(ax, xs, runs, label):
    length = min(len(r) for r in runs)
    if length == 0:
      return
    values = np.array([r[:length] for r in runs], np.float64)
    mean, std = values.mean(0), values.std(0)
    line, = ax.plot(xs[:length], mean, label=label,
                    color=palette[names.index(label) % len(palette)])
    ax.fill_between(xs[:length], mean - std, mean + std, alpha=0.2, color=line.get_color())

  fig = Figure(figsize=(17, 4.5), layout="constrained")
  FigureCanvasAgg(fig)
  ax_loss, ax_val, ax_time = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
  grads = {}
  for name in names:
    dirs = [run_dir(workdir, name, s) for s in sweep.seeds]
    dirs = [d for d in dirs if os.path.exists(os.path.join(d, "summary.json"))]
    train_runs = [[r for r in reporting.read_metrics(d, "train")] for d in dirs]
    epoch_runs = [[r for r in reporting.read_metrics(d, "epoch")] for d in dirs]
    if train_runs and all(train_runs):
      band(ax_loss, [r["step"] for r in train_runs[0]],
           [[r["loss"] for r in run] for run in train_runs], name)
    curve = sweep.curve_metric
    if epoch_runs and all(epoch_runs) and all(curve in r for run in epoch_runs for r in run):
      band(ax_val, [r["epoch"] for r in epoch_runs[0]],
           [[r[curve] for r in run] for run in epoch_runs], name)
      band(ax_time, np.cumsum([r.get("epoch_time_s", np.nan) for r in epoch_runs[0]]),
           [[r[curve] for r in run] for run in epoch_runs], name)
    norms = []
    for d in dirs:
      path = os.path.join(d, "diagnostics.json")
      if os.path.exists(path):
        with open(path) as f:
          norms.append(json.load(f)["grad_norm_through_time"])
    if norms:
      grads[name] = norms
  ax_loss.set(title="Training loss (mean ± std over seeds)", xlabel="step", ylabel="loss")
  ax_val.set(title=f"{sweep.curve_metric} (mean ± std over seeds)", xlabel="epoch",
             ylabel=sweep.curve_metric)
  ax_time.set(title=f"{sweep.curve_metric} against time", xlabel="training seconds",
              ylabel=sweep.curve_metric)
  for ax in (ax_loss, ax_val, ax_time):
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=7)
  paths.append(os.path.join(out, "learning_curves.png"))
  fig.savefig(paths[-1], dpi=100)

  metric = sweep.metrics[0]
  fig = Figure(figsize=(max(5, 1.0 * len(rows) + 2), 4.5), layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  means = [row[metric] if row[metric] is not None else np.nan for row in rows]
  stds = [row[metric + "_std"] or 0.0 for row in rows]
  ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
  ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
  ax.set(title=f"{metric} (mean ± std over seeds)", ylabel=metric)
  ax.grid(alpha=0.3, axis="y")
  paths.append(os.path.join(out, "summary.png"))
  fig.savefig(paths[-1], dpi=100)

  if grads:
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    # Log scale: exact zeros (paths cut by truncation) are drawn at a floor a decade below the
    # smallest non-zero norm, so the curves keep a readable range.
    positive = [v for runs in grads.values() for v in np.ravel(runs) if v > 0]
    floor = min(positive) / 10 if positive else np.finfo(np.float64).tiny
    for name, runs in grads.items():
      values = np.array(runs, np.float64)
      steps_back = np.arange(values.shape[1])[::-1]  # 0 = the last step
      mean = np.maximum(values.mean(0), floor)
      line, = ax.plot(steps_back, mean, label=name,  # Same colour as in the curves.
                      color=palette[names.index(name) % len(palette)])
      ax.fill_between(steps_back, np.maximum(values.min(0), floor), np.maximum(values.max(0), floor),
                      alpha=0.15, color=line.get_color())
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set(title="||dL/d state_t|| of the final params (h; h and c for the LSTM)\n"
                 "mean, min-max band over seeds",
           xlabel="steps before the last step", ylabel="gradient norm")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    paths.append(os.path.join(out, "grad_norm_through_time.png"))
    fig.savefig(paths[-1], dpi=100)
  return paths


# ----------------------------------------------------------------------------- command line

def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {' '.join(argv[1:])}")
  rows = run_sweep(flags.FLAGS.config, flags.FLAGS.workdir)
  with open(os.path.join(flags.FLAGS.workdir, "results.md")) as f:
    print(f.read())
  del rows


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from rnn_jax import cli  # pylint: disable=g-import-not-at-top
  cli.define_flags("A sweep config, e.g. configs/ablate_mnist_cells.py.")
  cli.restart_with_malloc_tunables()
  cli.setup_process()
  app.run(main, flags_parser=cli.parse_flags)
