"""The one config schema: every field, its default and what it means, and its validation.

`configs/base.py` returns `defaults()`; task configs override only what differs. `validate`
runs before anything is loaded or compiled, so a typo costs a second, not a compile.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping

import ml_collections
from ml_collections.config_dict import placeholder

def defaults() -> ml_collections.ConfigDict:
  """All config fields with their defaults. One comment per field.

  Two groups: the fields that define what a run computes (`_run_fields`), and the fields of
  how it is run (`_running_fields`: logging, checkpointing, devices), which may change when
  a run is resumed; see `resume_conflicts`.
  """
  c = ml_collections.ConfigDict()
  _run_fields(c)
  _running_fields(c)
  return c


def _run_fields(c: ml_collections.ConfigDict) -> None:
  # --- data (rnn_jax/data) ---
  c.dataset = "mnist"            # A loader in rnn_jax.data.LOADERS: 'mnist', 'imdb_reviews', ...
  c.sequence = "rows"            # Images as 'rows' (28x28), 'pixels' (784x1), 'permuted_pixels'.
  c.normalize = "unit"           # Pixels: 'unit' = [0, 1]; 'standardize' = train mean/std.
  c.validation_size = 5000       # First N training examples held out for validation (0 = none).
  c.vocab_size = 10000           # IMDB: vocabulary size, reserved ids (0 pad, 1 OOV) included.
  c.max_len = 80                 # IMDB: reviews cut or padded to this many tokens.
  c.padding = "post"             # IMDB: 'post' pads at the end (masked); 'pre' like Keras.
  c.truncating = "post"          # IMDB: 'post' keeps the first max_len tokens, 'pre' the last.
  c.length_buckets = ()          # IMDB: pad each batch only to the next bucket (bounded shapes).
  c.sequence_length = 50         # Synthetic tasks (adding problem): time steps T.
  c.num_train_examples = 50000   # Synthetic tasks: training set size.
  # --- model (rnn_jax/models.py) ---
  c.cell = "lstm"                # Registered cell name: see rnn_jax.cells.names().
  c.cell_options = ml_collections.ConfigDict()  # Cell options, e.g. {'forget_bias': 1.0}.
  c.hidden_size = 128            # Units per recurrent layer (per direction).
  c.num_layers = 1               # Stacked recurrent layers.
  c.bidirectional = False        # Add a backward layer at every level.
  c.embed_size = 100             # Token tasks: embedding width.
  c.readout = "last"             # 'last' hidden state or masked 'mean' of the outputs.
  c.binary_output = False        # Two-class tasks: one logit + sigmoid instead of 2 logits.
  c.dropout_rate = 0.0           # Dropout on inputs and on every layer's output.
  c.recurrent_dropout_rate = 0.0  # Variational dropout on h inside the recurrence.
  c.variational_dropout = False  # One input/output dropout mask per sequence, not per step.
  c.dropout_mode = "outputs"     # 'outputs': inputs, every layer's output and the read-out;
                                 # 'cell_inputs': Keras' cell dropout= (what enters each layer).
  c.truncation = placeholder(int)  # Truncated BPTT window k in steps; None = full BPTT.
  c.compute_dtype = "float32"    # Matmuls in 'float32', or 'bfloat16' / 'float16' (mixed
                                 # precision: float32 params, state, accumulation and loss).
  c.block = "plain"              # 'plain' stack, or 'residual': norm, recurrence, gated MLP
                                 # and skips around every layer (any cell).
  # --- optimisation (rnn_jax/train.py) ---
  c.seed = 0                     # Seeds params, dropout and data order.
  c.batch_size = 128             # Global batch size (split over devices and processes).
  c.num_epochs = 10              # Passes over the training split (may grow on resume, see below).
  c.learning_rate = 1e-3         # Adam's (peak) learning rate.
  c.lr_schedule = "constant"     # 'constant' | 'cosine' (to 0 at the end) | 'warmup_cosine'.
  c.warmup_steps = 0             # Linear warm-up steps for 'warmup_cosine'.
  c.grad_clip_norm = 0.0         # Clip gradients to this global norm (0 = off).
  c.weight_decay = 0.0           # Decoupled weight decay (AdamW) when > 0.


def _running_fields(c: ml_collections.ConfigDict) -> None:
  # --- running: how, not what; these may change when a run is resumed ---
  c.data_dir = placeholder(str)  # TFDS data dir; None: $TFDS_DATA_DIR, else tfds's default.
  c.download = False             # Let tfds download and prepare missing data (needs internet).
  c.eval_batch_size = 1000       # Evaluation batch size (last batch padded and masked).
  c.nonfinite = "stop"           # NaN/Inf loss or gradient: 'stop' with an error, or 'skip' it.
  c.parallel = "auto"            # 'auto' | 'jit' (one device) | 'sharded' (jit+Mesh) | 'pmap'.
  c.distributed = False          # Call jax.distributed.initialize() (multi-host runs).
  c.log_every_steps = 50         # Train metrics (loss, accuracy, grad/param norms) interval.
  c.checkpoint_every_steps = 500  # Checkpoint interval in steps (also at every epoch end).
  c.keep_checkpoints = 2         # Latest checkpoints kept for resuming.
  c.eval_every_epochs = 1        # Validation interval in epochs.
  c.diagnostics_every_steps = 0  # Gradient-norm-through-time logging interval (0 = off).
  c.progress_bar = True          # Per-epoch progress bar with examples/s and running loss.
  c.plots = True                 # Write PNG learning curves to workdir/plots at the end.
  c.unroll = 1                   # lax.scan unroll factor (speed only).
  c.remat = False                # Recompute each step in the backward pass (less memory).
  c.scan_mode = "auto"           # Linear-recurrence cells (mingru, minlstm, lru, rglru):
                                 # 'sequential' | 'chunked' | 'parallel' | 'step', or 'log'
                                 # (mingru, minlstm: the paper's log-space form); 'auto' =
                                 # sequential on CPU, parallel on GPU/TPU. Same function.


def _fields(fill) -> frozenset[str]:
  c = ml_collections.ConfigDict()
  fill(c)
  return frozenset(c.keys())


# Fields of how a run is executed, not of what it computes: free to change on resume.
RUNNING_FIELDS = _fields(_running_fields)
# Training budgets: with a constant learning rate, a run resumed with a larger budget is the
# run that budget would have trained from the start, so they may grow (never shrink) then.
BUDGET_FIELDS = ("num_epochs", "max_steps", "max_tokens")


def changed_fields(old: Mapping, new: Mapping) -> dict[str, list]:
  """{field: [old value, new value]} for every field that differs (missing = its default)."""
  reference = json.loads(defaults().to_json_best_effort())
  changes = {}
  for name in sorted(set(old) | set(new)):
    before, after = old.get(name, reference.get(name)), new.get(name, reference.get(name))
    if before != after:
      changes[name] = [before, after]
  return changes


def resume_conflicts(old: Mapping, new: Mapping) -> list[str]:
  """What keeps the run recorded as `old` (its config.json) from being resumed as `new`.

  Every field defines the run except RUNNING_FIELDS; a budget (BUDGET_FIELDS, 0 = no limit)
  may grow if the learning rate is constant. A field missing from `old` (a run written before
  it existed) counts as its default. Returns one "field: old -> new (why)" line per conflict.
  """
  conflicts = []
  for name, (before, after) in changed_fields(old, new).items():
    if name in RUNNING_FIELDS:
      continue
    if name in BUDGET_FIELDS and new.get("lr_schedule", "constant") == "constant":
      unlimited = lambda v: name != "num_epochs" and v == 0
      if unlimited(after) or (not unlimited(before) and after > before):
        continue
      why = "a budget may only grow"
    elif name in BUDGET_FIELDS:
      why = f"the {new.get('lr_schedule')!r} schedule is built for the total steps"
    else:
      why = "it defines the run"
    conflicts.append(f"{name}: {before!r} -> {after!r} ({why})")
  return conflicts


# Choices of the fields the trainer reads. A dataset's own fields (sequence, normalize,
# padding, truncating) are checked by that dataset (`data.validate`), a cell's options by the
# cell (`cells.get`): `train.validate` asks them.
_CHOICES = {
    "readout": ("last", "mean"),
    "dropout_mode": ("outputs", "cell_inputs"),
    "lr_schedule": ("constant", "cosine", "warmup_cosine"),
    "nonfinite": ("stop", "skip"),
    "parallel": ("auto", "jit", "sharded", "pmap"),
    "block": ("plain", "residual"),
    "scan_mode": ("auto", "step", "sequential", "chunked", "parallel", "log"),
}
_CHOICE_HINTS = {
    ("readout", "all"): " 'all' (logits at every step, models.SequenceModel) needs a label per "
                        "step; the classifier tasks have one label per sequence. The language "
                        "model (rnn_jax.lm) predicts at every step by itself.",
}
_POSITIVE = ("vocab_size", "max_len", "sequence_length", "num_train_examples", "hidden_size",
             "num_layers", "embed_size", "batch_size", "eval_batch_size", "num_epochs",
             "unroll", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
             "eval_every_epochs")
_NON_NEGATIVE = ("validation_size", "warmup_steps", "grad_clip_norm", "weight_decay",
                 "diagnostics_every_steps", "seed")
_RATES = ("dropout_rate", "recurrent_dropout_rate")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field's name, type and range against the schema. Raises ValueError saying
  what to fix. What only a cell or a dataset knows (its options, its fields' choices) is
  theirs to check: `train.validate` runs this, then asks them."""
  reference = defaults()
  errors = []
  for name in config.keys():
    if name not in reference:
      close = difflib.get_close_matches(name, reference.keys(), n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      errors.append(f"unknown field {name!r}.{hint}")
  for name, default in reference.items():
    if name not in config:
      continue
    value = config[name]
    if isinstance(default, bool):
      if not isinstance(value, bool):
        errors.append(f"{name} must be True or False, got {value!r}.")
    elif isinstance(default, int) and not isinstance(default, bool):
      if isinstance(value, bool) or not isinstance(value, int):
        errors.append(f"{name} must be an integer, got {value!r}.")
    elif isinstance(default, float):
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.append(f"{name} must be a number, got {value!r}.")
  if errors:
    raise ValueError(_message(errors))

  for name, allowed in _CHOICES.items():
    if name in config and config[name] not in allowed:
      errors.append(f"{name}={config[name]!r} is not one of {', '.join(map(repr, allowed))}."
                    + _CHOICE_HINTS.get((name, config[name]), ""))
  for name in _POSITIVE:
    if name in config and config[name] < 1:
      errors.append(f"{name} must be >= 1, got {config[name]}.")
  for name in _NON_NEGATIVE:
    if name in config and config[name] < 0:
      errors.append(f"{name} must be >= 0, got {config[name]}.")
  for name in _RATES:
    if name in config and not 0.0 <= config[name] < 1.0:
      errors.append(f"{name} must be in [0, 1), got {config[name]}.")
  if not config.learning_rate > 0:
    errors.append(f"learning_rate must be > 0, got {config.learning_rate}.")
  for name, default in reference.items():
    if (isinstance(default, float) and name in config
        and not math.isfinite(config[name])):
      errors.append(f"{name} must be a finite number, got {config[name]}.")
  if config.get("data_dir") is not None and not isinstance(config.data_dir, str):
    errors.append(f"data_dir must be a path (a string) or None, got {config.data_dir!r}.")
  errors.extend(_length_bucket_errors(config))
  if not isinstance(config.cell_options, (Mapping, ml_collections.ConfigDict)):
    errors.append(f"cell_options must be a dict of cell options, got {config.cell_options!r}; "
                  "e.g. --config.cell_options=\"{'forget_bias': 1.0}\".")
    raise ValueError(_message(errors))
  if config.truncation is not None and (not isinstance(config.truncation, int)
                                        or config.truncation < 1):
    errors.append(f"truncation must be None or an integer >= 1, got {config.truncation!r}.")
  if errors:
    raise ValueError(_message(errors))


def _length_bucket_errors(config: ml_collections.ConfigDict) -> list[str]:
  buckets = config.get("length_buckets", ())
  if (isinstance(buckets, (tuple, list))
      and all(isinstance(b, int) and not isinstance(b, bool) for b in buckets)
      and all(1 <= b <= config.max_len for b in buckets)
      and list(buckets) == sorted(set(buckets))):
    return []
  return [f"length_buckets must be () or strictly increasing integers in [1, max_len="
          f"{config.max_len}], got {buckets!r}; e.g. --config.length_buckets="
          f"\"({max(1, config.max_len // 4)}, {max(1, config.max_len // 2)})\"."]


def validate_devices(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """The global batch must split evenly over the devices (over the processes too, then:
  each process has the same number of devices)."""
  if config.batch_size % num_devices:
    raise ValueError(_message([
        f"batch_size={config.batch_size} does not divide over {num_devices} devices; use a "
        f"multiple of {num_devices}, e.g. --config.batch_size="
        f"{max(num_devices, config.batch_size // num_devices * num_devices)}."]))
  if config.eval_batch_size % num_devices:
    raise ValueError(_message([
        f"eval_batch_size={config.eval_batch_size} does not divide over {num_devices} devices; "
        f"use a multiple of {num_devices}."]))


def _message(errors: list[str]) -> str:
  lines = "\n  - ".join(errors)
  return (f"Invalid config:\n  - {lines}\nFix the config file or the --config.<field>=<value> "
          "override; rnn_jax/config.py lists every field with its meaning.")
