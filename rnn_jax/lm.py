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

Checkpoints at epoch ends (where carries are zero), so a resumed run is exact; and where a
`max_steps` / `max_tokens` budget stops training. That last one is the run's end: raising the
budget later and resuming goes on from zero carries with a learning-rate schedule built for
the new total, so it is not the run a larger budget would have trained from the start.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rnn_jax import checkpoints, config as config_lib, models, reporting, train
from rnn_jax import workdir as workdir_lib
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
      unroll=config.unroll, remat=config.remat)


def zero_carries(model: models.SequenceModel, batch: int) -> list[Any]:
  cell = model.recurrent_cell
  return [cell.zero_carry(batch, model.hidden_size) for _ in range(model.num_layers)]


def _loss(model, params, carries, x, y, key):
  finals, ys = model.features(params, x, key=key, initial_carries=carries)
  logits = ys @ params["head"]["w"] + params["head"]["b"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, jax.lax.stop_gradient(finals)


def lm_step(state: train.TrainState, carries, x, y, *, model, tx):
  """One update on one window: (state, carries [no gradient into the past], loss).

  A NaN/Inf loss or gradient skips the update (`train.apply_if_finite`, the guard every
  training path shares) and restarts the carries at zero, so one bad window does not
  poison the state carried into the next.
  """
  key = jax.random.fold_in(state.rng, state.step)
  (loss, finals), grads = jax.value_and_grad(
      functools.partial(_loss, model), has_aux=True)(state.params, carries, x, y, key)
  state, grad_norm = train.apply_if_finite(state, grads, loss, tx)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  finals = jax.tree.map(lambda f: jnp.where(finite, f, jnp.zeros_like(f)), finals)
  return state, finals, loss


def jit_step(model: models.SequenceModel, tx: optax.GradientTransformation):
  """`lm_step` for this model and optimizer, jitted (the state's buffers donated)."""
  return jax.jit(functools.partial(lm_step, model=model, tx=tx), donate_argnums=0,
                 compiler_options=train.compiler_options())


@functools.partial(jax.jit, static_argnums=0)
def _eval_window(model, params, carries, x, y):
  return _loss(model, params, carries, x, y, None)


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


def validate(config: ml_collections.ConfigDict) -> None:
  """The fields shared with classifier configs, checked by config.validate (ValueError)."""
  shared = config_lib.defaults()
  shared.update({k: v for k, v in config.items() if k not in LM_FIELDS})
  config_lib.validate(shared)
  for field in LM_FIELDS:
    value, minimum = config.get(field, 0), 1 if field.endswith("window") else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise ValueError(f"config.{field}={value!r}: use an integer >= {minimum}"
                       f"{'' if minimum else ' (0 = no limit)'}.")


def train_lm(config: ml_collections.ConfigDict, workdir: str,
             streams: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
  """Trains and evaluates the LM (resumable at epoch ends); writes and returns summary.json.

  streams: {'train', 'validation', 'test'} token streams; None reads IMDB (build_streams).
  Holds the workdir's lock (`rnn_jax.workdir.lock`) while it trains.
  """
  start_time = time.perf_counter()
  validate(config)
  workdir = os.path.abspath(workdir)
  train.check_workdir_writable(workdir)
  with workdir_lib.lock(workdir):
    return _train_lm(config, workdir, streams, start_time)


def _train_lm(config, workdir, streams, start_time):
  train.check_resume_compatible(workdir, config, ignore=("readout",))  # The LM reads all.
  if streams is None:
    streams, _ = build_streams(config, workdir)
  train.save_config(workdir, config)  # Only once the data accepted the config.
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
  state = train.create_train_state(model, tx, config.seed)
  ckpt = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"), keep=1, keep_best=1,
                                 best_metric="validation_perplexity", best_mode="min",
                                 record=train.run_record(config))
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state = restored[0]
  first_step = int(state.step)
  step_fn = jit_step(model, tx)
  carries = zero_carries(model, config.batch_size)
  compile_start = time.perf_counter()
  compiled = step_fn.lower(state, carries, rows[:, :k], rows[:, 1:k + 1]).compile()
  compile_time = time.perf_counter() - compile_start
  writer = reporting.MetricWriter(workdir, enabled=True)
  eval_stream = lambda s: s[:config.eval_tokens] if config.eval_tokens else s
  step, train_time = first_step, 0.0
  val = {}
  while step < total:
    epoch = step // steps_per_epoch
    carries = zero_carries(model, config.batch_size)
    epoch_start, totals = time.perf_counter(), None
    for i in range(step - epoch * steps_per_epoch, steps_per_epoch):
      if step >= total:
        break
      x, y = rows[:, i * k:(i + 1) * k], rows[:, i * k + 1:(i + 1) * k + 1]
      state, carries, loss = compiled(state, carries, x, y)
      totals = train.add_step_metrics(totals, {"loss": loss}, names=("loss",))
      step += 1
      if step % config.log_every_steps == 0:
        train.check_finite(state, config, [ckpt])
        writer.write(step, {"loss": float(loss), "perplexity": float(np.exp(float(loss)))},
                     kind="train")
    jax.block_until_ready(state)
    train.check_finite(state, config, [ckpt])  # Never save past a NaN.
    train_time += time.perf_counter() - epoch_start
    val = perplexity(model, state.params, eval_stream(streams["validation"]),
                     min(config.batch_size, 10), config.eval_window)
    record = {"epoch": epoch + 1, "validation_loss": val["loss"],
              "validation_perplexity": val["perplexity"], **train.epoch_train_means(totals)}
    writer.write(step, record, kind="epoch")
    print(reporting.epoch_line(epoch + 1, record) + f"  val ppl {val['perplexity']:.1f}",
          flush=True)
    ckpt.save(step, jax.device_get(state), force=True)
  test = perplexity(model, state.params, eval_stream(streams["test"]),
                    min(config.batch_size, 10), config.eval_window)
  writer.write(step, {"test_loss": test["loss"], "test_perplexity": test["perplexity"]},
               kind="eval")
  writer.close()
  ckpt.close()
  trained = (step - first_step) * config.batch_size * k
  summary = {"config": json.loads(config.to_json_best_effort()), "window": k,
             "test_loss": test["loss"], "test_perplexity": test["perplexity"],
             "validation_perplexity": val.get("perplexity"),
             "num_params": models.num_params(state.params), "steps": step,
             "wall_time_s": time.perf_counter() - start_time,
             "train_examples_per_s": trained / train_time if train_time else None,
             "compile_time_s": compile_time, "resumed_from_step": first_step}
  reporting.write_summary(workdir, summary)
  return summary
