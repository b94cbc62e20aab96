"""Sequence models: inputs -> recurrent stack -> dense head, as pure `init` / `apply`.

One model covers the tasks:
- image rows -> class: `[batch, 28, 28]` read as 28 steps of 28 pixels, the last output to logits;
- tokens -> class: embedding (id 0 = padding), the last valid output (or a masked mean) to logits
  (`num_outputs=1` for one logit + sigmoid, or 2 classes);
- many-to-many (`readout="all"`): the dense layer on every step's output.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from rnn_jax import cells, recurrent

READOUTS = ("last", "mean", "all")
DROPOUT_MODES = ("outputs", "cell_inputs")
INPUT_KINDS = ("features", "tokens")


@dataclasses.dataclass(frozen=True)
class SequenceModel:
  """A recurrent sequence model. Hashable, so it can be a static argument of `jax.jit`.

  Attributes:
    cell: registry name of the cell (see `rnn_jax.cells.names()`).
    cell_options: the cell's options as sorted (name, value) pairs.
    input_kind: "features" (float inputs [batch, time, input_size]) or "tokens" (int ids
      [batch, time], 0 = padding, embedded to `embed_size`).
    input_size: features per step, or the vocabulary size (reserved ids included) for tokens.
    embed_size: embedding width for tokens.
    hidden_size, num_layers, bidirectional: the recurrent stack.
    num_outputs: logits per example (per step with readout "all").
    readout: "last" (the final hidden state of each direction: the last valid step forwards,
      the first step backwards), "mean" (masked mean of the top outputs), or "all" (every step).
    dropout_rate: dropout on the (embedded) inputs and on every layer's output.
    recurrent_dropout_rate: variational dropout on h in the recurrence.
    variational_dropout: one dropout mask per sequence for inputs/outputs too.
    dropout_mode: "outputs" (dropout on the inputs, every layer's output and the read-out
      state, TF's DropoutWrapper on every cell) or "cell_inputs" (Keras' `dropout=` of a
      recurrent cell: only what enters each layer, the embedded inputs and the outputs of the
      layers below, one mask per sequence; the top layer's output and the read-out are kept).
    truncation, unroll, remat: see `rnn_jax.recurrent.scan`.
    compute_dtype: "float32", or "bfloat16" / "float16" for mixed precision: every matmul of
      the recurrent stack and the head in that dtype with float32 accumulation; params, the
      embedding, the carries, every elementwise update and the loss stay float32 (see
      `rnn_jax.recurrent.scan`).
    block: "plain" (layers feed each other) or "residual" (each layer a pre-norm residual
      block with a gated MLP, `rnn_jax.recurrent.residual_block`, for any cell; readout
      "last" then reads the stack's output at each sequence's last real step).
    scan_mode: how linear-recurrence cells are evaluated (`rnn_jax.recurrent.scan`).
  """
  cell: str = "lstm"
  cell_options: tuple[tuple[str, Any], ...] = ()
  input_kind: str = "features"
  input_size: int = 28
  embed_size: int = 0
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  num_outputs: int = 10
  readout: str = "last"
  dropout_rate: float = 0.0
  recurrent_dropout_rate: float = 0.0
  variational_dropout: bool = False
  dropout_mode: str = "outputs"
  truncation: int | None = None
  unroll: int = 1
  remat: bool = False
  compute_dtype: str = "float32"
  block: str = "plain"
  scan_mode: str = "auto"

  def __post_init__(self):
    if self.input_kind not in INPUT_KINDS:
      raise ValueError(f"input_kind {self.input_kind!r} is not one of {INPUT_KINDS}.")
    if self.readout not in READOUTS:
      raise ValueError(f"readout {self.readout!r} is not one of {READOUTS}.")
    if self.dropout_mode not in DROPOUT_MODES:
      raise ValueError(f"dropout_mode {self.dropout_mode!r} is not one of {DROPOUT_MODES}.")
    recurrent.check_compute_dtype(self.compute_dtype)
    if self.block not in recurrent.BLOCKS:
      raise ValueError(f"block {self.block!r} is not one of {recurrent.BLOCKS}.")
    if self.block == "residual" and self.bidirectional and self.readout == "last":
      raise ValueError("readout 'last' of a bidirectional residual stack would read a mix "
                       "whose backward half has seen one element; use readout 'mean'.")
    if self.input_kind == "tokens" and self.embed_size < 1:
      raise ValueError("A token model needs embed_size >= 1.")
    for name in ("input_size", "hidden_size", "num_layers", "num_outputs"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    recurrent.check_scan_mode(self.recurrent_cell, self.scan_mode)  # Also: unknown cells.
    if self.recurrent_dropout_rate > 0 and self.recurrent_cell.linear is not None:
      raise ValueError(f"recurrent_dropout_rate={self.recurrent_dropout_rate}: cell "
                       f"{self.cell!r} reads h in no matmul (its gates read the input only), "
                       "so there is nothing for recurrent dropout to mask. Set it to 0; "
                       "dropout_rate still acts on the inputs and outputs.")

  @property
  def recurrent_cell(self) -> cells.Cell:
    return cells.get(self.cell, **dict(self.cell_options))

  @property
  def output_features(self) -> int:
    return self.hidden_size * (2 if self.bidirectional and self.block == "plain" else 1)

  def init(self, key: jax.Array) -> dict[str, Any]:
    """Params: {"embed": [vocab, embed]?, "rnn": [layer dicts], "head": {"w", "b"}}."""
    k_embed, k_rnn, k_head = jax.random.split(key, 3)
    params = {}
    size = self.input_size
    if self.input_kind == "tokens":
      embed = jax.random.normal(k_embed, (self.input_size, self.embed_size)) * 0.05
      params["embed"] = embed.at[0].set(0.0)  # Padding starts as a zero vector, like Keras.
      size = self.embed_size
    params["rnn"] = recurrent.init_layers(k_rnn, self.recurrent_cell, size, self.hidden_size,
                                          self.num_layers, self.bidirectional, self.block)
    params["head"] = {
        "w": jax.nn.initializers.glorot_uniform()(k_head, (self.output_features,
                                                           self.num_outputs)),
        "b": jnp.zeros((self.num_outputs,)),
    }
    return params

  def features(self, params: dict[str, Any], inputs: jax.Array,
               lengths: jax.Array | None = None, *, key: jax.Array | None = None,
               probes: Any = None, initial_carries: Any = None) -> tuple[list[Any], jax.Array]:
    """The recurrent stack's (final carries, outputs [batch, time, output_features])."""
    if self.input_kind == "tokens":
      xs = jnp.take(params["embed"], inputs, axis=0)
    else:
      xs = inputs
    k_in = k_rnn = None
    if key is not None:  # Per-example keys: masks independent of the batch's split.
      k_in, k_rnn = recurrent.split_keys(recurrent.example_keys(key, xs.shape[0]), 2)
    cell_inputs = self.dropout_mode == "cell_inputs"
    variational = self.variational_dropout or cell_inputs
    xs = recurrent.dropout(k_in, xs, self.dropout_rate, shared_axes=(1,) if variational else ())
    return recurrent.run_layers(
        self.recurrent_cell, params["rnn"], xs, lengths=lengths,
        initial_carries=initial_carries, key=k_rnn, dropout_rate=self.dropout_rate,
        recurrent_dropout_rate=self.recurrent_dropout_rate,
        variational=variational, truncation=self.truncation, unroll=self.unroll,
        remat=self.remat, probes=probes, top_output_dropout=not cell_inputs,
        compute_dtype=self.compute_dtype, scan_mode=self.scan_mode)

  def apply(self, params: dict[str, Any], inputs: jax.Array,
            lengths: jax.Array | None = None, *, key: jax.Array | None = None,
            probes: Any = None) -> jax.Array:
    """Logits: [batch, num_outputs], or [batch, time, num_outputs] for readout "all".

    Args:
      inputs: [batch, time, input_size] floats, or [batch, time] token ids.
      lengths: [batch] true lengths of right-padded sequences (None: all full length).
      key: dropout key during training, or [batch] per-example keys (see
        `recurrent.example_keys`); None at evaluation (no dropout).
      probes: see `rnn_jax.recurrent.run_layers` (gradient-through-time diagnostics).
    """
    k_features = k_readout = None
    if key is not None:
      k_features, k_readout = recurrent.split_keys(recurrent.example_keys(key, len(inputs)), 2)
    finals, ys = self.features(params, inputs, lengths, key=k_features, probes=probes)
    if self.readout == "last" and self.block == "residual":  # The block's output, not a carry.
      last = (jnp.full(len(ys), ys.shape[1] - 1) if lengths is None
              else jnp.maximum(jnp.asarray(lengths) - 1, 0))
      pooled = ys[jnp.arange(len(ys)), last]
    elif self.readout == "last":
      top = finals[-1]
      if self.bidirectional:
        pooled = jnp.concatenate([cells.hidden_of(top["fwd"]), cells.hidden_of(top["bwd"])],
                                 axis=-1)
      else:
        pooled = cells.hidden_of(top)
      # The top layer's output dropout applies to `ys`; apply the same treatment to the read
      # out state so "last" and "mean" see the same regularisation.
      if self.dropout_mode == "outputs":
        pooled = recurrent.dropout(k_readout, pooled, self.dropout_rate)
    elif self.readout == "mean":
      if lengths is None:
        pooled = ys.mean(axis=1)
      else:
        steps = jnp.arange(ys.shape[1])[None, :, None] < lengths[:, None, None]
        pooled = (ys * steps).sum(axis=1) / jnp.maximum(lengths, 1)[:, None].astype(ys.dtype)
    else:
      pooled = ys
    return self.head(params, pooled)

  def head(self, params: dict[str, Any], features: jax.Array) -> jax.Array:
    """The dense read-out: features [..., output_features] -> logits [..., num_outputs]."""
    w = cells.cast_weights({"w_head": params["head"]["w"]},
                           recurrent.check_compute_dtype(self.compute_dtype))["w_head"]
    return cells.matmul(features, w) + params["head"]["b"]


def per_example_loss(model: SequenceModel, logits: jax.Array,
                     labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(loss, correct) per example: the one rule that training and diagnostics share.

  Softmax cross-entropy for classes, sigmoid cross-entropy for one logit with integer labels
  (binary classification), squared error for one output with float labels (regression, where
  "correct" is the adding problem's usual |error| < 0.04).
  """
  if model.num_outputs > 1:
    return (optax.softmax_cross_entropy_with_integer_labels(logits, labels),
            jnp.argmax(logits, -1) == labels)
  logit = logits[..., 0]
  if jnp.issubdtype(labels.dtype, jnp.integer):
    return (optax.sigmoid_binary_cross_entropy(logit, labels.astype(logit.dtype)),
            (logit > 0) == (labels == 1))
  return jnp.square(logit - labels), jnp.abs(logit - labels) < 0.04


def example_weights(batch: dict[str, Any]) -> jax.Array:
  """[batch] weight of each example: batch["mask"] (0 for the rows that only pad an evaluation
  batch to its fixed size), else all ones."""
  if "mask" in batch:
    return jnp.asarray(batch["mask"], jnp.float32)
  return jnp.ones(jnp.shape(batch["labels"])[:1], jnp.float32)


def batch_loss(model: SequenceModel, logits: jax.Array, batch: dict[str, Any]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss every path optimises or reports (training, evaluation, vmapped seeds,
  diagnostics, the language model), and the sums that make exact metrics over many batches.

  Per example: `per_example_loss`, averaged over time steps when the model reads out every
  step ([batch, time] logits, the language model); then the mean over examples weighted by
  `example_weights`. Returns (loss, {"loss_sum", "correct", "count"}), where "correct" counts
  examples (for per-step readouts: the fraction of correct steps of each example).
  """
  per_example, correct = per_example_loss(model, logits, batch["labels"])
  if per_example.ndim > 1:
    axes = tuple(range(1, per_example.ndim))
    per_example, correct = per_example.mean(axes), correct.astype(jnp.float32).mean(axes)
  weights = example_weights(batch)
  count = jnp.sum(weights)
  loss_sum = jnp.sum(per_example * weights)
  sums = {"loss_sum": loss_sum, "correct": jnp.sum(correct * weights), "count": count}
  return loss_sum / jnp.maximum(count, 1.0), sums


def num_params(params: Any) -> int:
  """The number of scalars in a params pytree."""
  return int(sum(x.size for x in jax.tree.leaves(params)))
