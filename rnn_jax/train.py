"""Classifier training: the train state, pure train/eval steps, their parallel wrappers,
and the job `rnn_jax.engine.fit` runs for one run or for seeds stepped together.

`train_and_evaluate(config, workdir)` is the entry point for one run (`launch.py`, notebooks);
`train_runs` trains seeds together (`rnn_jax.ablate`). Re-running on the same workdir resumes
from the latest checkpoint and continues exactly: same data order, same dropout keys, same
final parameters as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from typing import Any, Iterable, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnn_jax import cells, config as config_lib, data, diagnostics, engine, models, recurrent

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]


# ----------------------------------------------------------------------------- state

@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. A pytree: checkpointable, vmappable, shardable.

  Attributes:
    step: number of batches consumed so far (updates applied + updates skipped).
    params: model params.
    opt_state: optax state.
    rng: raw uint32[2] PRNG key; the dropout key of step s is fold_in(rng, s).
    nonfinite_steps: batches whose loss or gradient was NaN/Inf (their update was skipped).
    first_nonfinite_step: the first such step, or -1.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_steps: jax.Array
  first_nonfinite_step: jax.Array


def build_model(config: ml_collections.ConfigDict, task: data.Task) -> models.SequenceModel:
  """The model a config describes, sized for the task's inputs and outputs."""
  if task.num_classes == 0:
    num_outputs = 1  # Regression.
  elif task.num_classes == 2 and config.binary_output:
    num_outputs = 1
  else:
    num_outputs = task.num_classes
  return models.SequenceModel(
      cell=config.cell, cell_options=tuple(sorted(dict(config.cell_options).items())),
      input_kind=task.input_kind, input_size=task.input_size, embed_size=config.embed_size,
      hidden_size=config.hidden_size, num_layers=config.num_layers,
      bidirectional=config.bidirectional, num_outputs=num_outputs, readout=config.readout,
      dropout_rate=config.dropout_rate, recurrent_dropout_rate=config.recurrent_dropout_rate,
      variational_dropout=config.variational_dropout, dropout_mode=config.dropout_mode,
      truncation=config.truncation,
      unroll=config.unroll, remat=config.remat, compute_dtype=config.compute_dtype,
      block=config.block, scan_mode=config.scan_mode)


def build_optimizer(config: ml_collections.ConfigDict, total_steps: int
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam(W) with optional global-norm clipping and a learning-rate schedule."""
  lr = config.learning_rate
  if config.lr_schedule == "constant":
    schedule = optax.constant_schedule(lr)
  elif config.lr_schedule == "cosine":
    schedule = optax.cosine_decay_schedule(lr, max(total_steps, 1))
  else:
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps,
                                                  max(total_steps, config.warmup_steps + 1))
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay > 0:
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay))
  else:
    parts.append(optax.adam(schedule))
  return optax.chain(*parts), schedule


def create_train_state(model: models.SequenceModel, tx: optax.GradientTransformation,
                       seed: int) -> TrainState:
  init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init(init_key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=dropout_key, nonfinite_steps=jnp.zeros((), jnp.int32),
                    first_nonfinite_step=jnp.full((), -1, jnp.int32))


# ----------------------------------------------------------------------------- steps

def apply_if_finite(state: TrainState, grads: Any, loss: jax.Array,
                    tx: optax.GradientTransformation) -> tuple[TrainState, jax.Array]:
  """The optimizer update, applied only when the loss and the gradient are finite.

  Every training path (one run, vmapped seeds, the language model) updates through this one
  guard: a NaN/Inf step leaves params and optimizer state as they were (so Adam's step count
  and the schedule stand still) and is counted in `nonfinite_steps` / `first_nonfinite_step`.
  Returns the new state (step + 1 either way) and the gradient's global norm.
  """
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep_new = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  state = state.replace(
      step=state.step + 1,
      params=keep_new(new_params, state.params),
      opt_state=keep_new(new_opt_state, state.opt_state),
      nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
      first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step,
                                     state.first_nonfinite_step))
  return state, grad_norm


def updates_applied(state: TrainState) -> jax.Array:
  """How many updates the optimizer has applied: its step count, which drives the schedule."""
  return state.step - state.nonfinite_steps


def train_step(state: TrainState, batch: Batch, rng: jax.Array | None = None, *,
               model: models.SequenceModel, tx: optax.GradientTransformation,
               schedule: optax.Schedule | None = None,
               axis_name: str | None = None) -> tuple[TrainState, Metrics]:
  """One update on `batch`. Pure. NaN/Inf loss or gradients: the update is skipped and counted.

  Args:
    state: the train state.
    batch: {"inputs", "labels", "lengths"?}.
    rng: dropout key for this step; default fold_in(state.rng, state.step). Example i of the
      global batch draws its dropout masks from fold_in(rng, i), so jit, sharded and pmap
      drop the same units (see `recurrent.example_keys`).
    model, tx, schedule: static (bind them with functools.partial).
    axis_name: set under `jax.pmap`: gradients and metrics are averaged over it, and this
      device's rows are rows [axis_index * per_device, ...) of the global batch.
  """
  if rng is None:
    rng = jax.random.fold_in(state.rng, state.step)
  rows = len(batch["labels"])
  first_row = 0 if axis_name is None else jax.lax.axis_index(axis_name) * rows
  keys = recurrent.example_keys(rng, rows, first_row)

  def loss_fn(params):
    logits = model.apply(params, batch["inputs"], batch.get("lengths"), key=keys)
    return models.batch_loss(model, logits, batch)

  (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads, loss = jax.lax.pmean((grads, loss), axis_name)
    sums = jax.lax.psum(sums, axis_name)
  # The rate this step's update uses: the schedule at the optimizer's own count, which a
  # skipped (non-finite) step does not advance.
  learning_rate = None if schedule is None else schedule(updates_applied(state))
  state, grad_norm = apply_if_finite(state, grads, loss, tx)
  metrics = {"loss": loss, "accuracy": sums["correct"] / jnp.maximum(sums["count"], 1.0),
             "grad_norm": grad_norm, "param_norm": optax.global_norm(state.params)}
  if learning_rate is not None:
    metrics["learning_rate"] = learning_rate
  return state, metrics


def eval_step(params: Any, batch: Batch, *, model: models.SequenceModel,
              axis_name: str | None = None) -> dict[str, jax.Array]:
  """Sums of loss, correct predictions and real examples on `batch` (padding rows masked)."""
  logits = model.apply(params, batch["inputs"], batch.get("lengths"))
  _, sums = models.batch_loss(model, logits, batch)
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums


# ----------------------------------------------------------------------------- parallelism

def compiler_options() -> dict[str, Any] | None:
  """XLA options for the compiled train and eval steps: on CPU, LLVM at -O1 instead of -O2.

  Most of a CPU compile is LLVM optimising the fused kernels; the time of a step is in the
  matmuls, which are library calls that -O1 does not touch, so compiles get shorter and steps
  do not get slower (docs/performance.md; `python -m benchmarks.speed --configs` measures
  both). Results agree to float rounding (some elementwise math rounds differently in the
  last place; tests/test_speed_paths.py). Other backends keep XLA's defaults.
  """
  if jax.default_backend() != "cpu":
    return None
  return {"xla_backend_optimization_level": 1}


class Runner:
  """Compiled train/eval steps for one of four ways to use the devices.

  - "jit": one device, `jax.jit`.
  - "sharded": `jax.jit` over a 1-D `Mesh` ('data'): the batch sharded on its first axis,
    state replicated; XLA inserts the gradient all-reduce. Works across processes.
  - "pmap": `jax.pmap` with `lax.pmean` over the 'data' axis; state replicated per device and
    batches reshaped to [devices, per_device, ...].
  - "vmap": `rows` runs that differ only in their seed, stepped together on one device:
    `jax.jit(jax.vmap(train_step))` over a leading seed axis on the state and the batches
    (each seed's own batch; see `stack_batches`).
  The first three compute the same update on the same global batch. Under "vmap" the states
  and batches given to the methods are sequences, one per seed.

  Under "sharded" and "pmap" the metrics come back on the first local device, and on CPU each
  step finishes before `train` returns: XLA:CPU runs the replicas of a multi-device program
  on a pool of max(cores, devices) threads, and a launch that finds 32 programs already
  queued on a device waits on one of those threads. With enough small programs queued
  behind a step (indexing replicated metrics, summing them), the waiting launches hold the
  threads the step's last replica needs, its all-reduce never completes, and XLA aborts the
  process after 40 s ("Termination timeout ... only 3 of them arrived"). Keeping one step in
  flight and the metrics on one device leaves no queue to build.
  """

  def __init__(self, mode: str, model: models.SequenceModel, tx: optax.GradientTransformation,
               schedule: optax.Schedule | None = None, *, rows: int = 1,
               can_pad: bool = False):
    if mode == "auto":
      mode = "sharded" if jax.device_count() > 1 else "jit"
    if (mode == "vmap") != (rows > 1):
      raise ValueError(f"parallel={mode!r} with {rows} row(s): 'vmap' is for several seeds, "
                       "the other modes for one run.")
    self.mode, self.rows, self._can_pad = mode, rows, can_pad
    self._one_step_in_flight = (mode in ("sharded", "pmap") and jax.default_backend() == "cpu"
                                and jax.local_device_count() > 1)
    self._compiled = {}  # Batch shapes -> ahead-of-time compiled train step.
    step = functools.partial(train_step, model=model, tx=tx, schedule=schedule)
    evaluate = functools.partial(eval_step, model=model)
    options = compiler_options()
    if mode in ("jit", "vmap"):
      if mode == "vmap":
        step, evaluate = jax.vmap(step), jax.vmap(evaluate)
      self._train = jax.jit(step, donate_argnums=0, compiler_options=options)
      self._eval = jax.jit(evaluate, compiler_options=options)
    elif mode == "sharded":
      self.mesh = Mesh(np.array(jax.devices()), ("data",))
      self._replicated = NamedSharding(self.mesh, PartitionSpec())
      self._batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
      self._train = jax.jit(step, donate_argnums=0, out_shardings=self._replicated,
                            compiler_options=options)
      self._eval = jax.jit(evaluate, out_shardings=self._replicated, compiler_options=options)
    elif mode == "pmap":  # jax.pmap takes no compiler options: XLA's defaults.
      self._train = jax.pmap(functools.partial(step, axis_name="data"), axis_name="data",
                             donate_argnums=0)
      self._eval = jax.pmap(functools.partial(evaluate, axis_name="data"), axis_name="data")
    else:
      raise ValueError(f"parallel={mode!r} is not one of 'auto', 'jit', 'sharded', 'pmap'.")

  def put_state(self, state: TrainState | Sequence[TrainState]) -> TrainState:
    """Places a host state (under "vmap": one per seed) on the devices as this mode wants it."""
    if self.mode == "vmap":
      return jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(state)))
    if self.mode == "sharded":
      # From a host copy: with several processes, a committed single-device array (e.g. one
      # restored by Orbax) would ask for a cross-host transfer, which CPU and GPU lack.
      return jax.device_put(jax.device_get(state), self._replicated)
    if self.mode == "pmap":  # One copy per local device along a new leading axis.
      devices = jax.local_devices()
      stacked = jax.tree.map(lambda x: np.broadcast_to(x, (len(devices),) + np.shape(x)),
                             jax.device_get(state))
      return jax.device_put(stacked, NamedSharding(Mesh(np.array(devices), ("d",)),
                                                   PartitionSpec("d")))
    return jax.device_put(state)

  def get_state(self, state: TrainState) -> TrainState:
    """One host copy of the state (under pmap: the first replica; under vmap: all seeds)."""
    if self.mode == "pmap":  # Replica 0, copied from the first device's shard.
      return jax.device_get(first_replica(state))
    return jax.device_get(state)

  def host_states(self, state: TrainState) -> list[TrainState]:
    """One host copy of the state per row (under pmap: of the first replica)."""
    if self.mode == "vmap":
      state = jax.device_get(state)
      return [jax.tree.map(lambda x, i=i: x[i], state) for i in range(self.rows)]
    return [self.get_state(state)]

  def put_batch(self, batch: Batch | Sequence[Batch]) -> Batch:
    """This process's NumPy batch (under "vmap": one per seed) -> the device arrays of the
    global batch."""
    if self.mode == "vmap":
      return stack_batches(batch, can_pad=self._can_pad)
    if self.mode == "sharded":
      return {k: jax.make_array_from_process_local_data(self._batch_sharding, v)
              for k, v in batch.items()}
    if self.mode == "pmap":
      n = jax.local_device_count()
      return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}
    return batch

  def train(self, state: TrainState, batch: Batch | Sequence[Batch]
            ) -> tuple[TrainState, Metrics]:
    batch = self.put_batch(batch)
    step = self._compiled.get(_shapes(batch), self._train)
    state, metrics = step(state, batch)
    metrics = self._on_one_device(metrics)
    if self._one_step_in_flight:
      jax.block_until_ready(state)
    return state, metrics

  def eval(self, params: Any, batch: Batch | Sequence[Batch]) -> dict[str, jax.Array]:
    sums = self._on_one_device(self._eval(params, self.put_batch(batch)))
    if self._one_step_in_flight:
      jax.block_until_ready(sums)
    return sums

  def _on_one_device(self, metrics: Metrics) -> Metrics:
    """Replicated metrics -> their copy on the first local device (under pmap: replica 0's)."""
    if self.mode == "pmap":
      return first_replica(metrics)
    if self.mode == "sharded":
      return jax.tree.map(lambda x: x.addressable_data(0), metrics)
    return metrics

  def compile(self, state: TrainState, batch: Batch | Sequence[Batch]) -> float:
    """Compiles the train step for the batch's shapes ahead of time; returns seconds taken."""
    start = time.perf_counter()
    batch = self.put_batch(batch)
    if self.mode == "pmap":  # pmap has no AOT path that its call reuses: time a throwaway step
      # (on a fresh copy of the state from the host: the step donates its input).
      jax.block_until_ready(self._train(self.put_state(self.get_state(state)), batch))
    else:
      self._compiled[_shapes(batch)] = self._train.lower(state, batch).compile()
    return time.perf_counter() - start

  def compiled(self, batch: Batch | Sequence[Batch]) -> jax.stages.Compiled:
    """The train step `compile` built for `batch`'s shapes ("jit", "sharded", "vmap"), to read
    XLA's program (`.as_text()`) or its memory (`.memory_analysis()`)."""
    if self.mode == "pmap":
      raise ValueError("Runner('pmap') keeps no ahead-of-time compiled step (pmap cannot reuse "
                       "one); read the compiled program from a 'jit' or 'sharded' Runner.")
    shapes = _shapes(self.put_batch(batch))  # Global shapes, as `compile` keyed them.
    if shapes not in self._compiled:
      raise KeyError(f"No train step compiled for batch shapes {shapes}; call compile(state, "
                     "batch) first.")
    return self._compiled[shapes]


def first_replica(tree: Any) -> Any:
  """pmap leaves [devices, ...] -> replica 0's [...], read from the first local device's shard
  (no multi-device program; see `Runner`)."""
  return jax.tree.map(lambda x: x.addressable_data(0).reshape(x.shape[1:]), tree)


def _shapes(batch: Batch) -> tuple:
  return tuple((k, np.shape(v)) for k, v in sorted(batch.items()))


def stack_batches(batches: tuple[Batch, ...], *, can_pad: bool = False) -> Batch:
  """[S] batches -> one batch with a leading seed axis.

  With `can_pad` (right-padded token batches with lengths), batches of different widths are
  right-padded with id 0 to the widest; the masked scan never reads past a length.
  """
  widths = {b["inputs"].shape[1] for b in batches}
  if len(widths) > 1:
    if not (can_pad and "lengths" in batches[0]):
      raise ValueError(
          f"The seeds' batches have different widths {sorted(widths)} and cannot be stacked. "
          "Fix: set length_buckets=() or padding='post' in the base config, or vmap_seeds=False "
          "in the sweep.")
    width = max(widths)
    batches = [{**b, "inputs": np.pad(b["inputs"], [(0, 0), (0, width - b["inputs"].shape[1])]
                                      + [(0, 0)] * (b["inputs"].ndim - 2))} for b in batches]
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def evaluate(runner: Runner, params: Any, batches: Iterable[Batch | Sequence[Batch]]
             ) -> list[dict[str, float]]:
  """Per row (seed): loss and accuracy over every example of an evaluation split ({} if
  the split is empty)."""
  totals = None
  for batch in batches:
    sums = runner.eval(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    return [{} for _ in range(runner.rows)]
  totals = jax.device_get(totals)
  out = []
  for i in range(runner.rows):
    row = {k: float(v if runner.rows == 1 else v[i]) for k, v in totals.items()}
    count = max(row["count"], 1.0)
    out.append({"loss": row["loss_sum"] / count, "accuracy": row["correct"] / count,
                "count": int(row["count"])})
  return out


# ----------------------------------------------------------------------------- classifier runs

def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize()` when the config or the environment asks for it.

  On Cloud TPU, SLURM and Open MPI JAX finds everything itself. Elsewhere (e.g. several
  processes on one machine) set JAX_COORDINATOR_ADDRESS (host:port of process 0), which JAX
  reads, and JAX_NUM_PROCESSES and JAX_PROCESS_ID, which JAX does not read and are passed here.
  """
  if not (config.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    return
  if jax.distributed.is_initialized():
    return
  # Cross-process collectives on CPU. Set before initialize(), and without asking for the
  # backend (jax.default_backend() would start it, and initialize() must come first).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  counts = {}
  for key, name in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
    if os.environ.get(name):
      try:
        counts[key] = int(os.environ[name])
      except ValueError:
        raise ValueError(f"{name}={os.environ[name]!r} is not an integer. Fix: set it to "
                         "the number of processes / this process's index (0 for the "
                         "coordinator).") from None
  jax.distributed.initialize(**counts)


def check_fits_in_memory(model: models.SequenceModel, config: ml_collections.ConfigDict,
                         task: data.Task, *, rows: int = 1) -> None:
  """Refuses, before anything is allocated, a model whose memory certainly exceeds a device's.

  The estimate is a lower bound: parameters x 4 (params, gradients, Adam's two moments),
  plus what the backward pass keeps per step (with remat: the carries only), times `rows`
  (seeds trained together on one device). A model above it cannot run; one below may still
  not fit, and then XLA says so.
  """
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
  cell = model.recurrent_cell
  per_step = cell.carry_size if config.remat else cell.carry_size + cell.num_gates
  directions = 2 if model.bidirectional else 1
  devices = 1 if config.parallel == "jit" or rows > 1 else jax.device_count()
  examples = config.batch_size // devices
  activation_bytes = (examples * task.seq_len * model.num_layers * directions
                      * model.hidden_size * per_step * 4)
  needed = rows * (4 * param_bytes + activation_bytes)
  device = jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  available = (stats or {}).get("bytes_limit")
  if available is None:  # CPU: the machine's physical memory.
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if needed > available:
    gib = lambda b: f"{b / 2**30:.1f} GiB"
    raise ValueError(
        f"This model needs at least {gib(needed)} per device ({models.num_params(shapes):,} "
        f"parameters: {gib(4 * param_bytes)} with gradients and Adam's moments; activations "
        f"{gib(activation_bytes)} for {examples} examples x {task.seq_len} steps"
        f"{f'; x {rows} seeds' if rows > 1 else ''}), but "
        f"{device.platform} device {device.id} has {gib(available)}. Nothing was run. Fix: "
        "lower --config.hidden_size, --config.batch_size or --config.num_layers, or set "
        "--config.remat=True.")


def _check_batch_shapes(task: data.Task, batch: Batch) -> None:
  """A batch whose shape is not the one the task declares would train a wrong model quietly."""
  inputs, per_process = np.shape(batch["inputs"]), task.batch_size // task.process_count
  if task.input_kind == "tokens":
    ok = len(inputs) == 2 and inputs[0] == per_process and inputs[1] <= task.seq_len
    expected = f"[{per_process}, <= {task.seq_len}]"
  else:
    ok = inputs == (per_process, task.seq_len, task.input_size)
    expected = f"[{per_process}, {task.seq_len}, {task.input_size}]"
  if not ok or np.shape(batch["labels"]) != (per_process,):
    raise ValueError(
        f"Dataset {task.name!r} gives train batches with inputs of shape {list(inputs)} and "
        f"labels of shape {list(np.shape(batch['labels']))}; expected inputs {expected} "
        f"and labels [{per_process}]. Fix the dataset's loader (its make_batch) or its "
        "declared seq_len / input_size.")


def diagnostics_batch(task: data.Task, max_examples: int = 256) -> Batch:
  """The fixed batch diagnostics are computed on: the first validation batch (the first train
  batch of epoch 0 without a validation split), cut to `max_examples` rows."""
  if task.num_eval_examples("validation") > 0:
    batch = next(task.eval_batches("validation"))
  else:
    batch = next(task.train_batches(0))
  return {k: v[:max_examples] for k, v in batch.items()}


def validate(config: ml_collections.ConfigDict) -> None:
  """Everything about a classifier config that can be checked before anything is loaded:
  the schema (`config.validate`), then the owners of the rest: the cell registry (the cell
  and its options, `cells.get`), the scan (`compute_dtype`) and the dataset registry
  (`data.validate`). ValueError."""
  config_lib.validate(config)
  cells.get(config.cell, **dict(config.cell_options))
  recurrent.check_compute_dtype(config.compute_dtype)
  data.validate(config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates, checkpoints and reports. Resumes from `workdir` if it holds a run.

  Returns the summary also written to `workdir/summary.json`.
  """
  return train_runs([config], [workdir])[0]


def train_runs(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]
               ) -> list[dict[str, Any]] | None:
  """Trains one run, or several that differ only in `seed` together (one vmapped step).

  Each workdir gets what a run of its own writes. Seeds whose checkpoints stopped at
  different steps cannot step together: then nothing is trained and None is returned (train
  them one by one). Returns the summaries.
  """
  # Whatever stops the run (NaN, SIGTERM, a write error), close the Orbax managers and the
  # metric files, so the real error is the last thing printed.
  with contextlib.ExitStack() as cleanup:
    job = _classifier_job(configs, [os.path.abspath(w) for w in workdirs], cleanup)
    return None if job is None else engine.fit(job)


def _step_without_carry(runner: Runner, state: TrainState, carry: None,
                        batch: Batch | Sequence[Batch]) -> tuple[TrainState, None, Metrics]:
  state, metrics = runner.train(state, batch)
  return state, carry, metrics


def _classifier_job(configs, workdirs, cleanup) -> engine.Job | None:
  start_time = time.perf_counter()
  for c in configs:
    validate(c)
  seedless = [{k: v for k, v in json.loads(c.to_json_best_effort()).items() if k != "seed"}
              for c in configs]
  if any(s != seedless[0] for s in seedless):
    raise ValueError("Runs trained together must have configs that differ only in `seed`.")
  config, rows = configs[0], len(configs)
  maybe_initialize_distributed(config)
  if rows > 1 and jax.process_count() > 1:
    raise ValueError("Seeds trained together (vmap_seeds) run in one process on one device; "
                     f"this is process {jax.process_index()} of {jax.process_count()}. Fix: "
                     "set vmap_seeds=False in the sweep, or run it in a single process.")
  config_lib.validate_devices(config, 1 if rows > 1 else jax.device_count())
  primary = jax.process_index() == 0
  engine.claim_workdirs(configs, workdirs, cleanup)

  tasks = [data.load(c, w) for c, w in zip(configs, workdirs)]
  if len({t.steps_per_epoch for t in tasks}) > 1:
    raise ValueError("The seeds' tasks have different epoch lengths; use vmap_seeds=False.")
  task = tasks[0]
  model = build_model(config, task)
  check_fits_in_memory(model, config, task, rows=rows)
  records = engine.open_records(configs, workdirs,
                                [engine.data_files(t.metadata) for t in tasks], cleanup,
                                best_metric="validation_accuracy", best_mode="max",
                                primary=primary)
  total_steps = task.steps_per_epoch * config.num_epochs
  tx, schedule = build_optimizer(config, total_steps)
  runner = Runner("vmap" if rows > 1 else config.parallel, model, tx, schedule, rows=rows,
                  can_pad=config.padding == "post")
  fresh = [create_train_state(model, tx, c.seed) for c in configs]
  restored = [ckpt.restore_latest(s) for ckpt, s in zip(records.checkpoints, fresh)]
  steps = {0 if r is None else int(r[1]) for r in restored}
  if len(steps) > 1:
    logging.warning("Seeds stopped at different steps %s; they cannot step together.", steps)
    return None
  first_step = steps.pop()
  if first_step:
    logging.info("Resumed from step %d in %s.", first_step, ", ".join(workdirs))
    records.note_resume(configs, first_step)
  states = [s if r is None else r[0] for s, r in zip(fresh, restored)]
  # One run takes its state and batches as they are; seeds as sequences, one per seed.
  per_row = (lambda xs: tuple(xs)) if rows > 1 else (lambda xs: next(iter(xs)))
  state = runner.put_state(per_row(states))

  first_batches = [next(t.train_batches(0)) for t in tasks]
  _check_batch_shapes(task, first_batches[0])
  compile_time = runner.compile(state, per_row(first_batches))
  logging.info("Train step compiled in %.2f s (%s, %d device(s)).", compile_time, runner.mode,
               jax.device_count())
  diagnose = None
  if config.diagnostics_every_steps > 0 and primary:
    diagnose = [diagnostics.make_diagnostics(model, diagnostics_batch(t)) for t in tasks]
  return engine.Job(
      configs=configs, workdirs=workdirs, checkpoints=records.checkpoints,
      writers=records.writers, state=state,
      step=functools.partial(_step_without_carry, runner),
      batches=lambda epoch, first: map(per_row, zip(*[t.train_batches(epoch, first)
                                                      for t in tasks])),
      evaluate=lambda state, split: evaluate(
          runner, state.params, map(per_row, zip(*[t.eval_batches(split) for t in tasks]))),
      host_states=runner.host_states, steps_per_epoch=task.steps_per_epoch,
      total_steps=total_steps, examples_per_step=rows * config.batch_size,
      first_step=first_step, compile_time_s=compile_time, start_time=start_time,
      summary={"num_params": models.num_params(states[0].params),
               "devices": 1 if rows > 1 else jax.device_count(),
               "parallel": "vmap_seeds" if rows > 1 else runner.mode,
               **({"vmapped_seeds": rows} if rows > 1 else {})},
      diagnose=diagnose, label=f"[{rows} seeds] " if rows > 1 else "", primary=primary)
