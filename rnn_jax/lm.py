"""A word-level language model on IMDB reviews, trained with stateful truncated BPTT.

The corpus is one long token stream: the train reviews, tokenised with `data.imdb.tokenize`,
each followed by an end-of-review token, laid out as `batch_size` parallel rows
[batch, tokens / batch] (Zaremba et al. 2014). Training walks the rows in windows of k =
`config.window` steps: the model (embedding, recurrent stack, a dense head on every step) starts
each window from the previous window's final carry with its gradient stopped, so every update
back-propagates exactly k steps while the state reaches over the whole stream (Williams and
Peng's truncated BPTT with k1 = k2 = k; one optimizer update per window). Carries restart at
zero at each epoch. Perplexity = exp(mean cross-entropy per token) on the validation stream
(the first `validation_size` train reviews) after each epoch and on the test reviews at the end,
both read in windows of `eval_window` steps with the carry passed along, so perplexities of
runs with different k are comparable.

Vocabulary: `vocab_size` ids = 0 padding (never in the stream), 1 out-of-vocabulary, the
vocab_size - 3 most frequent words of the train reviews left after the validation ones, and
`<eor>` = vocab_size - 1.

Trained by the one loop, `rnn_jax.engine.fit`, like every run: `python launch.py
--config=configs/imdb_lm.py --workdir=DIR` resumes, refuses a changed config, skips or stops on
NaN/Inf, and saves on SIGTERM. Each checkpoint holds the carries next to the train state, so a
run resumed mid-epoch continues exactly. A `max_steps` / `max_tokens` budget ends the run; with
a constant learning rate it may be raised later, and the resumed run continues exactly as a
run started with the larger budget (with a decaying schedule the resume check refuses it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rnn_jax import cells, config as config_lib, engine, models, recurrent, train
from rnn_jax.data import common, imdb

LM_FIELDS = ("window", "eval_window", "max_steps", "max_tokens", "eval_tokens")
EOR = "<eor>"


def defaults() -> ml_collections.ConfigDict:
  """The LM's config: the shared fields plus its own (LM_FIELDS)."""
  c = config_lib.defaults()
  c.dataset = "imdb_reviews"
  c.vocab_size = 10000
  c.embed_size = 128
  c.hidden_size = 256
  c.batch_size = 32
  c.validation_size = 1000
  c.num_epochs = 1
  c.grad_clip_norm = 1.0
  c.window = 35         # k: steps per window = steps back-propagated; one update per window.
  c.eval_window = 100   # Window for perplexity (the carry passes on; no gradients).
  c.max_steps = 0       # Stop after this many updates (0: all epochs).
  c.max_tokens = 0      # Stop after this many training tokens, batch x window per update
                        # (0: all epochs). The fair budget across windows k: same data seen.
  c.eval_tokens = 0     # Score only the first N tokens of validation and test (0: all).
  return c


def build_streams(config, workdir=None) -> tuple[dict[str, np.ndarray], list[str]]:
  """({'train', 'validation', 'test'} -> int32 token stream, vocabulary), cached in workdir."""
  cache = common.workdir_file(workdir, f"lm_streams_{config.vocab_size}_{config.validation_size}.npz")
  if cache is not None and cache.exists():
    with np.load(str(cache)) as f:
      return {k: f[k] for k in ("train", "validation", "test")}, list(f["vocab"])
  raw, _ = common.read_splits(imdb.TFDS_NAME, ("train", "test"),
                              data_dir=common.resolve_data_dir(config), download=False)
  texts = {"validation": raw["train"]["text"][:config.validation_size],
           "train": raw["train"]["text"][config.validation_size:], "test": raw["test"]["text"]}
  tokens = {k: [imdb.tokenize(t) for t in v] for k, v in texts.items()}
  vocab = imdb.build_vocab(tokens["train"], config.vocab_size - 1) + [EOR]
  index = {w: i for i, w in enumerate(vocab)}
  eor = len(vocab) - 1
  streams = {k: np.array([i for review in v for i in
                          [index.get(w, imdb.OOV_ID) for w in review] + [eor]], np.int32)
             for k, v in tokens.items()}
  if cache is not None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(str(cache), vocab=np.array(vocab), **streams)
  return streams, vocab


def batchify(stream: np.ndarray, batch: int) -> np.ndarray:
  """A stream -> [batch, len // batch]: row r holds the r-th contiguous slice."""
  columns = len(stream) // batch
  if columns < 2:
    raise ValueError(f"A stream of {len(stream)} tokens is too short for batch {batch}.")
  return stream[:batch * columns].reshape(batch, columns)


def build_model(config) -> models.SequenceModel:
  return models.SequenceModel(
      cell=config.cell, cell_options=tuple(sorted(dict(config.cell_options).items())),
      input_kind="tokens", input_size=config.vocab_size, embed_size=config.embed_size,
      hidden_size=config.hidden_size, num_layers=config.num_layers,
      num_outputs=config.vocab_size, readout="all", dropout_rate=config.dropout_rate,
      recurrent_dropout_rate=config.recurrent_dropout_rate,
      variational_dropout=config.variational_dropout, dropout_mode=config.dropout_mode,
      unroll=config.unroll, remat=config.remat, compute_dtype=config.compute_dtype,
      block=config.block, scan_mode=config.scan_mode)


def zero_carries(model: models.SequenceModel, batch: int) -> list[Any]:
  cell = model.recurrent_cell
  return [cell.zero_carry(batch, model.hidden_size) for _ in range(model.num_layers)]


def _loss(model, params, carries, x, y, key):
  finals, ys = model.features(params, x, key=key, initial_carries=carries)
  logits = model.head(params, ys)
  loss, sums = models.batch_loss(model, logits, {"labels": y})
  return loss, (jax.lax.stop_gradient(finals), sums)


def lm_step(state: train.TrainState, carries, x, y, *, model, tx):
  """One update on one window: (state, carries [no gradient into the past], metrics).

  A NaN/Inf loss or gradient skips the update (`train.apply_if_finite`, the guard every
  training path shares) and restarts the carries at zero, so one bad window does not
  poison the state carried into the next.
  """
  key = jax.random.fold_in(state.rng, state.step)
  (loss, (finals, sums)), grads = jax.value_and_grad(
      functools.partial(_loss, model), has_aux=True)(state.params, carries, x, y, key)
  state, grad_norm = train.apply_if_finite(state, grads, loss, tx)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  finals = jax.tree.map(lambda f: jnp.where(finite, f, jnp.zeros_like(f)), finals)
  metrics = {"loss": loss, "perplexity": jnp.exp(loss),
             "accuracy": sums["correct"] / jnp.maximum(sums["count"], 1.0),
             "grad_norm": grad_norm}
  return state, finals, metrics


def jit_step(model: models.SequenceModel, tx: optax.GradientTransformation):
  """`lm_step` for this model and optimizer, jitted (the state's buffers donated)."""
  return jax.jit(functools.partial(lm_step, model=model, tx=tx), donate_argnums=0,
                 compiler_options=train.compiler_options())


@functools.partial(jax.jit, static_argnums=0)
def _eval_window(model, params, carries, x, y):
  loss, (finals, _) = _loss(model, params, carries, x, y, None)
  return loss, finals


def perplexity(model, params, stream: np.ndarray, batch: int, window: int) -> dict[str, float]:
  """exp(mean cross-entropy per token) over `stream`, read in full windows (a ragged tail of
  fewer than `window` steps per row is left out), the carry passed on."""
  rows = batchify(stream, batch)
  carries, total, count = zero_carries(model, batch), 0.0, 0
  for start in range(0, rows.shape[1] - window, window):
    loss, carries = _eval_window(model, params, carries, rows[:, start:start + window],
                                 rows[:, start + 1:start + window + 1])
    total += float(loss)
    count += 1
  if not count:
    raise ValueError(f"The evaluation stream is shorter than one window of {window} steps "
                     f"per row (batch {batch}); lower eval_window.")
  mean = total / count
  return {"loss": mean, "perplexity": float(np.exp(mean))}


# Fields of the shared schema that a causal, stateful LM cannot use: set to anything but
# their default, they are refused rather than silently ignored.
UNUSED_FIELDS = {
    "bidirectional": "a causal language model cannot read the future",
    "truncation": "the window is the truncation: set --config.window",
    "readout": "the LM reads out every step",
    "binary_output": "the LM predicts one of vocab_size words",
    "length_buckets": "the LM reads one stream in windows, not padded reviews",
    "padding": "the LM reads one stream in windows, not padded reviews",
    "max_len": "the LM reads one stream in windows, not padded reviews",
    "diagnostics_every_steps": "diagnostics are defined for classifiers",
    "parallel": "the LM trains on one device (jit)",
    "distributed": "the LM trains on one device (jit)",
}


def validate(config: ml_collections.ConfigDict) -> None:
  """The shared fields (config.validate), the LM's own (LM_FIELDS), and no field the LM
  does not use (UNUSED_FIELDS) set to anything but its default. Raises ValueError."""
  shared = config_lib.defaults()
  shared.update({k: v for k, v in config.items() if k not in LM_FIELDS})
  config_lib.validate(shared)
  cells.get(config.cell, **dict(config.cell_options))
  recurrent.check_compute_dtype(config.compute_dtype)
  for field in LM_FIELDS:
    value, minimum = config.get(field, 0), 1 if field.endswith("window") else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise ValueError(f"config.{field}={value!r}: use an integer >= {minimum}"
                       f"{'' if minimum else ' (0 = no limit)'}.")
  defaults = config_lib.defaults()
  for field, why in UNUSED_FIELDS.items():
    if field in config and config[field] != defaults[field]:
      raise ValueError(f"config.{field}={config[field]!r} is not used by the language model "
                       f"({why}). Remove it, or set it back to {defaults[field]!r}.")


def is_lm_config(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` describes the language model (it has the LM's own fields)."""
  return all(field in config for field in LM_FIELDS)


def train_lm(config: ml_collections.ConfigDict, workdir: str,
             streams: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
  """Trains and evaluates the LM; resumable at any step; writes and returns summary.json.

  streams: {'train', 'validation', 'test'} token streams; None reads IMDB (build_streams).
  """
  with contextlib.ExitStack() as cleanup:
    return engine.fit(_lm_job(config, os.path.abspath(workdir), streams, cleanup))[0]


def _lm_job(config, workdir, streams, cleanup) -> engine.Job:
  start_time = time.perf_counter()
  validate(config)
  engine.claim_workdirs([config], [workdir], cleanup)
  if streams is None:
    streams, _ = build_streams(config, workdir)
  records = engine.open_records([config], [workdir], [{}], cleanup,
                                best_metric="validation_perplexity", best_mode="min",
                                primary=True)
  model = build_model(config)
  k = config.window
  rows = batchify(streams["train"], config.batch_size)
  steps_per_epoch = (rows.shape[1] - 1) // k
  total = steps_per_epoch * config.num_epochs
  if config.max_steps:
    total = min(total, config.max_steps)
  if config.max_tokens:
    total = min(total, max(1, config.max_tokens // (config.batch_size * k)))
  tx, _ = train.build_optimizer(config, total)
  zero = lambda: zero_carries(model, config.batch_size)
  fresh = engine.checkpoint_tree(train.create_train_state(model, tx, config.seed), zero())
  try:
    restored = records.checkpoints[0].restore_latest(fresh)
  except engine.checkpoints.CheckpointError as error:
    # A workdir written before the carries were saved with the state: its checkpoints are
    # epoch and budget ends, from which that version went on with zero carries.
    try:
      old = records.checkpoints[0].restore_latest(fresh["state"])
    except engine.checkpoints.CheckpointError:
      raise error from None
    restored = engine.checkpoint_tree(old[0], zero()), old[1]
  tree = fresh if restored is None else restored[0]
  first_step = int(tree["state"].step)
  if restored is not None:
    records.note_resume([config], first_step)
  state, carries = jax.device_put((tree["state"], tree["carry"]))
  step_fn = jit_step(model, tx)
  compile_start = time.perf_counter()
  compiled = step_fn.lower(state, carries, rows[:, :k], rows[:, 1:k + 1]).compile()
  compile_time = time.perf_counter() - compile_start

  def windows(epoch, first):
    del epoch  # Every epoch reads the same stream; the carries restart at zero.
    for i in range(first, steps_per_epoch):
      yield rows[:, i * k:(i + 1) * k], rows[:, i * k + 1:(i + 1) * k + 1]

  def evaluate(state, split):
    stream = streams[split][:config.eval_tokens] if config.eval_tokens else streams[split]
    return [perplexity(model, state.params, stream, min(config.batch_size, 10),
                       config.eval_window)]

  return engine.Job(
      configs=[config], workdirs=[workdir], checkpoints=records.checkpoints,
      writers=records.writers, state=state,
      step=lambda state, carries, window: compiled(state, carries, *window),
      batches=windows, evaluate=evaluate,
      host_states=lambda state: [jax.device_get(state)], steps_per_epoch=steps_per_epoch,
      total_steps=total, examples_per_step=config.batch_size * k, first_step=first_step,
      compile_time_s=compile_time, start_time=start_time,
      summary={"window": k, "num_params": models.num_params(state.params), "devices": 1,
               "parallel": "jit"},
      carry=carries, zero_carry=lambda: jax.device_put(zero()))
