"""Training: the train state, pure train/eval steps, their parallel wrappers, and the loop.

`train_and_evaluate(config, workdir)` is the one entry point (`launch.py`, notebooks, ablations).
Re-running it on the same workdir resumes from the latest checkpoint and continues exactly:
same data order, same dropout keys, same final parameters as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import signal
import tempfile
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnn_jax import checkpoints, config as config_lib, data, diagnostics, models, recurrent
from rnn_jax import reporting, workdir as workdir_lib

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
      unroll=config.unroll, remat=config.remat)


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


# ----------------------------------------------------------------------------- losses

def loss_and_metrics(model: models.SequenceModel, logits: jax.Array, labels: jax.Array,
                     weights: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted mean loss, and the sums needed for exact metrics over many batches.

  The per-example rule is `models.per_example_loss`.
  """
  per_example, correct = models.per_example_loss(model, logits, labels)
  count = jnp.sum(weights)
  loss = jnp.sum(per_example * weights) / jnp.maximum(count, 1.0)
  sums = {"loss_sum": jnp.sum(per_example * weights), "correct": jnp.sum(correct * weights),
          "count": count}
  return loss, sums


def _weights(batch: Batch) -> jax.Array:
  if "mask" in batch:
    return batch["mask"].astype(jnp.float32)
  return jnp.ones(batch["labels"].shape[:1], jnp.float32)


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
    return loss_and_metrics(model, logits, batch["labels"], _weights(batch))

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
  _, sums = loss_and_metrics(model, logits, batch["labels"], _weights(batch))
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums


# ----------------------------------------------------------------------------- parallelism

def compiler_options() -> dict[str, Any] | None:
  """XLA options for the compiled train and eval steps: on CPU, LLVM at -O1 instead of -O2.

  Most of a CPU compile is LLVM optimising the fused kernels; the time of a step is in the
  matmuls, which are library calls that -O1 does not touch. Measured on the 2-core CPU: the
  XLA compile of the IMDB train steps took ~25% less (imdb_best 3.1-3.2 s -> 2.4 s), and
  the step time of every benchmark shape (benchmarks/speed.py) was unchanged within noise.
  Results agree to float rounding (some elementwise math rounds differently in the last
  place; tests/test_speed_paths.py). Other backends keep XLA's defaults (not measured there).
  """
  if jax.default_backend() != "cpu":
    return None
  return {"xla_backend_optimization_level": 1}


class Runner:
  """Compiled train/eval steps for one of three ways to use the devices.

  - "jit": one device, `jax.jit`.
  - "sharded": `jax.jit` over a 1-D `Mesh` ('data'): the batch sharded on its first axis,
    state replicated; XLA inserts the gradient all-reduce. Works across processes.
  - "pmap": `jax.pmap` with `lax.pmean` over the 'data' axis; state replicated per device and
    batches reshaped to [devices, per_device, ...].
  All three compute the same update on the same global batch.
  """

  def __init__(self, mode: str, model: models.SequenceModel, tx: optax.GradientTransformation,
               schedule: optax.Schedule | None = None):
    if mode == "auto":
      mode = "sharded" if jax.device_count() > 1 else "jit"
    self.mode = mode
    self._compiled = {}  # Batch shapes -> ahead-of-time compiled train step.
    step = functools.partial(train_step, model=model, tx=tx, schedule=schedule)
    evaluate = functools.partial(eval_step, model=model)
    options = compiler_options()
    if mode == "jit":
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

  def put_state(self, state: TrainState) -> TrainState:
    """Places a host state on the devices as this mode wants it."""
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
    """One host copy of the state (the first replica under pmap)."""
    if self.mode == "pmap":
      state = jax.tree.map(lambda x: x[0], state)
    return jax.device_get(state)

  def put_batch(self, batch: Batch) -> Batch:
    """This process's NumPy batch -> device arrays of the global batch."""
    if self.mode == "sharded":
      return {k: jax.make_array_from_process_local_data(self._batch_sharding, v)
              for k, v in batch.items()}
    if self.mode == "pmap":
      n = jax.local_device_count()
      return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}
    return batch

  def train(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    step = self._compiled.get(_shapes(batch), self._train)
    state, metrics = step(state, self.put_batch(batch))
    if self.mode == "pmap":
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return state, metrics

  def eval(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
    sums = self._eval(params, self.put_batch(batch))
    if self.mode == "pmap":
      sums = jax.tree.map(lambda x: x[0], sums)
    return sums

  def compile(self, state: TrainState, batch: Batch) -> float:
    """Compiles the train step for `batch`'s shapes ahead of time; returns seconds taken."""
    start = time.perf_counter()
    if self.mode == "pmap":  # pmap has no AOT path that its call reuses: time a throwaway step.
      jax.block_until_ready(self._train(jax.tree.map(jnp.copy, state), self.put_batch(batch)))
    else:
      self._compiled[_shapes(batch)] = self._train.lower(state, self.put_batch(batch)).compile()
    return time.perf_counter() - start


def _shapes(batch: Batch) -> tuple:
  return tuple((k, np.shape(v)) for k, v in sorted(batch.items()))


def evaluate(runner: Runner, params: Any, batches) -> dict[str, float]:
  """Loss and accuracy over every example of an evaluation split."""
  totals = None
  for batch in batches:
    sums = runner.eval(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    return {}
  totals = jax.device_get(totals)
  count = max(float(totals["count"]), 1.0)
  return {"loss": float(totals["loss_sum"]) / count, "accuracy": float(totals["correct"]) / count,
          "count": int(totals["count"])}


# ----------------------------------------------------------------------------- the loop

class NonFiniteLossError(FloatingPointError):
  """The loss or the gradient became NaN or Inf."""


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


def recorded_run(workdir: str) -> dict[str, Any] | None:
  """The record (`run_record`) of the run whose checkpoint `workdir` holds, or None if
  nothing was saved.

  It travels inside each checkpoint (the `record` of `checkpoints.Checkpoints`), so it is the
  config that trained those parameters whatever config.json says; a checkpoint written
  before that existed falls back to {"config": config.json}.
  """
  latest = checkpoints.latest_record(os.path.join(workdir, "checkpoints"))
  if latest is None:
    return None
  _, record = latest
  if record and "config" in record:
    return record
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      return {"config": json.load(f)}
  return None


def recorded_config(workdir: str) -> dict[str, Any] | None:
  """The config inside `recorded_run(workdir)`, or None."""
  record = recorded_run(workdir)
  return None if record is None else record["config"]


class ResumeConflictError(ValueError):
  """The workdir holds a run trained with another config."""


def check_resume_compatible(workdir: str, config: ml_collections.ConfigDict, *,
                            ignore: tuple[str, ...] = ()) -> None:
  """Refuses to resume a workdir whose checkpoint was trained by a different run.

  Which fields define a run is the schema's (`config.resume_conflicts`): all but how it is
  run (logging, checkpoint intervals, devices); a budget such as num_epochs may grow under a
  constant learning rate, which extends a finished run. A workdir with no checkpoint (a
  first start that failed) may start again with any config. `ignore`: fields the trainer
  does not read (the LM's readout).
  """
  old = recorded_config(workdir)
  if old is None:
    return
  new = json.loads(config.to_json_best_effort())
  old, new = ({k: v for k, v in c.items() if k not in ignore} for c in (old, new))
  changed = config_lib.resume_conflicts(old, new)
  if changed:
    raise ResumeConflictError(
        f"The workdir {workdir} holds a run with a different config ({'; '.join(changed)}). "
        "Resuming would mix two experiments. Use a new --workdir, or restore the old values.")


def check_workdir_writable(workdir: str) -> None:
  """Fails before any compute when `workdir` cannot be created or written to."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_check_"):
      pass
  except OSError as e:
    raise ValueError(
        f"The workdir {workdir} is not writable ({type(e).__name__}: {e.strerror or e}). "
        "Nothing was run. Fix: choose a --workdir on a writable filesystem with free space, "
        "or fix its permissions.") from e


def check_fits_in_memory(model: models.SequenceModel, config: ml_collections.ConfigDict,
                         task: data.Task) -> None:
  """Refuses, before anything is allocated, a model whose memory certainly exceeds a device's.

  The estimate is a lower bound: parameters x 4 (params, gradients, Adam's two moments),
  plus what the backward pass keeps per step (with remat: the carries only). A model above
  it cannot run; one below may still not fit, and then XLA says so.
  """
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
  cell = model.recurrent_cell
  per_step = cell.carry_size if config.remat else cell.carry_size + cell.num_gates
  directions = 2 if model.bidirectional else 1
  devices = 1 if config.parallel == "jit" else jax.device_count()
  rows = config.batch_size // devices
  activation_bytes = (rows * task.seq_len * model.num_layers * directions * model.hidden_size
                      * per_step * 4)
  needed = 4 * param_bytes + activation_bytes
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
        f"{gib(activation_bytes)} for {rows} examples x {task.seq_len} steps), but "
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


def _move_aside_unsaved_attempt(workdir: str) -> None:
  """metrics.jsonl and tensorboard/ of a start that saved no checkpoint -> *.unsaved-<time>,
  so that the curves of the run starting now are not mixed with them."""
  stamp = time.strftime("%Y%m%d-%H%M%S")
  for name in (reporting.METRICS_FILE, "tensorboard"):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.replace(path, f"{path}.unsaved-{stamp}")
      logging.warning("%s is from a start that saved no checkpoint; moved to %s.unsaved-%s.",
                      path, path, stamp)


def run_record(config: ml_collections.ConfigDict,
               task: data.Task | None = None) -> dict[str, Any]:
  """What every checkpoint of a run carries about it: the config that trained it and the
  SHA-256 of each file its data depends on (`task.metadata`'s "*_file" entries: the IMDB
  vocabulary, the pixel permutation), which `check_data_files` compares on resume."""
  files = {} if task is None else {
      name: _sha256(path) for name, path in task.metadata.items()
      if name.endswith("_file") and path and os.path.exists(path)}
  return {"config": json.loads(config.to_json_best_effort()), "data_files": files}


def check_data_files(workdir: str, task: data.Task) -> None:
  """Refuses to resume when a file the data depends on differs from the checkpoint's: the
  parameters were trained with the old one (a changed vocabulary re-maps every word)."""
  record = recorded_run(workdir)
  recorded = (record or {}).get("data_files") or {}
  current = run_record(ml_collections.ConfigDict(), task)["data_files"]
  changed = [f"{task.metadata[name]}" for name, digest in recorded.items()
             if current.get(name, digest) != digest]
  if changed:
    raise ValueError(
        f"{', '.join(changed)} differs from the file the checkpoint in {workdir} was trained "
        "with (its SHA-256 is stored in the checkpoint). Fix: put the original file back, or "
        "use a new --workdir.")


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  tmp = os.path.join(workdir, "config.json.tmp")
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(tmp, os.path.join(workdir, "config.json"))


@contextlib.contextmanager
def _sigterm_flag():
  """Yields a dict whose "set" becomes True on SIGTERM, so the loop can save and exit."""
  flag = {"set": False}
  previous = None

  def handler(signum, frame):
    del signum, frame
    flag["set"] = True

  try:
    previous = signal.signal(signal.SIGTERM, handler)
  except ValueError:  # Not the main thread (e.g. some notebook runners): no handler.
    previous = None
  try:
    yield flag
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates, checkpoints and reports. Resumes from `workdir` if it holds a run.

  Returns the summary also written to `workdir/summary.json`.
  """
  # Whatever stops the run (NaN, SIGTERM, a write error), close the Orbax managers and the
  # metric files, so the real error is the last thing printed.
  with contextlib.ExitStack() as cleanup:
    return _train_and_evaluate(config, workdir, cleanup)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        cleanup: contextlib.ExitStack) -> dict[str, Any]:
  start_time = time.perf_counter()
  config_lib.validate(config)
  maybe_initialize_distributed(config)
  config_lib.validate_devices(config, jax.device_count(), jax.process_count())
  primary = jax.process_index() == 0
  workdir = os.path.abspath(workdir)
  check_workdir_writable(workdir)
  cleanup.enter_context(workdir_lib.lock(workdir))  # One run per workdir.
  check_resume_compatible(workdir, config)

  task = data.load(config, workdir)
  check_data_files(workdir, task)
  recorded = recorded_config(workdir)  # Before config.json is rewritten below.
  if primary and recorded is None:  # Nothing saved: earlier metrics are a failed attempt's.
    _move_aside_unsaved_attempt(workdir)
  if primary:  # Only after the data accepted the config: a rejected value must not stick.
    save_config(workdir, config)
  model = build_model(config, task)
  check_fits_in_memory(model, config, task)
  total_steps = task.steps_per_epoch * config.num_epochs
  tx, schedule = build_optimizer(config, total_steps)
  runner = Runner(config.parallel, model, tx, schedule)
  state = create_train_state(model, tx, config.seed)
  num_params = models.num_params(state.params)

  ckpt = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"),
                                 keep=config.keep_checkpoints, keep_best=1,
                                 best_metric="validation_accuracy",
                                 record=run_record(config, task))
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, _ = restored
    logging.info("Resumed from step %d in %s.", int(state.step), workdir)
  cleanup.callback(ckpt.close)
  writer = reporting.MetricWriter(workdir, enabled=primary)
  cleanup.callback(writer.close)
  first_step = int(state.step)
  if restored is not None and recorded is not None:  # What changed, said in the record.
    changed = config_lib.changed_fields(recorded, json.loads(config.to_json_best_effort()))
    if changed:
      writer.write(first_step, {"changed": changed}, kind="resume")
  state = runner.put_state(state)

  first_batch = next(task.train_batches(0))
  _check_batch_shapes(task, first_batch)
  compile_time = runner.compile(state, first_batch)
  logging.info("Train step compiled in %.2f s (%s, %d device(s)).", compile_time, runner.mode,
               jax.device_count())
  diagnose = None
  if config.diagnostics_every_steps > 0 and primary:
    diagnose = diagnostics.make_diagnostics(
        model, diagnostics_batch(task),
        loss_fn=lambda logits, b: loss_and_metrics(model, logits, b["labels"], _weights(b))[0])

  previous = [r for r in reporting.read_metrics(workdir)
              if r.get("kind") == "epoch" and r["step"] <= first_step]
  best_val = max((r.get("validation_accuracy", -1.0) for r in previous), default=-1.0)
  train_time, train_examples = 0.0, 0
  step = first_step
  epoch_metrics: dict[str, Any] = {}
  with _sigterm_flag() as sigterm:
    for epoch in range(step // task.steps_per_epoch, config.num_epochs):
      epoch_start = time.perf_counter()
      start_in_epoch = step - epoch * task.steps_per_epoch
      bar = reporting.progress(epoch + 1, task.steps_per_epoch, initial=start_in_epoch,
                               enabled=None if primary and config.progress_bar else False)
      last: dict[str, float] = {}
      totals = None
      for batch in task.train_batches(epoch, start_in_epoch):
        state, metrics = runner.train(state, batch)
        totals = add_step_metrics(totals, metrics)
        step += 1
        if step % config.log_every_steps == 0 or step % task.steps_per_epoch == 0:
          last = _host_metrics(metrics)  # Waits for this step: the timing below is honest.
          check_finite(state, config, [ckpt])
          examples = (step - epoch * task.steps_per_epoch - start_in_epoch) * config.batch_size
          last["examples_per_s"] = examples / (time.perf_counter() - epoch_start)
          writer.write(step, last, kind="train")
          bar.set_metrics(loss=last["loss"], examples_per_s=last["examples_per_s"])
        bar.update(1)
        if diagnose is not None and step % config.diagnostics_every_steps == 0:
          writer.write(step, diagnose(runner.get_state(state).params), kind="diagnostics")
        if step % config.checkpoint_every_steps == 0:
          check_finite(state, config, [ckpt])  # Never save past a NaN: resuming would re-stop.
          ckpt.save(step, runner.get_state(state))
        if sigterm["set"]:
          check_finite(state, config, [ckpt])
          ckpt.save(step, runner.get_state(state), force=True)
          ckpt.wait()
          bar.close()
          logging.warning("SIGTERM: saved step %d in %s; run the same command to resume.",
                          step, workdir)
          raise SystemExit(143)
      bar.close()
      jax.block_until_ready(state)
      train_time += time.perf_counter() - epoch_start
      train_examples += (task.steps_per_epoch - start_in_epoch) * config.batch_size
      epoch_time = time.perf_counter() - epoch_start
      epoch_metrics = {"epoch": epoch + 1, **epoch_train_means(totals),
                       "last_batch_accuracy": last.get("accuracy"),
                       "last_batch_loss": last.get("loss"), "epoch_time_s": epoch_time,
                       "examples_per_s": (task.steps_per_epoch - start_in_epoch)
                                         * config.batch_size / epoch_time}
      if (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.num_epochs:
        val = evaluate(runner, state.params, task.eval_batches("validation"))
        if val:
          epoch_metrics.update(validation_accuracy=val["accuracy"], validation_loss=val["loss"])
      check_finite(state, config, [ckpt])
      host_state = runner.get_state(state)
      ckpt.save(step, host_state, force=True)
      if "validation_accuracy" in epoch_metrics:
        best_val = max(best_val, epoch_metrics["validation_accuracy"])
        ckpt.save_best(step, host_state,
                       {"validation_accuracy": epoch_metrics["validation_accuracy"]})
      writer.write(step, epoch_metrics, kind="epoch")
      if primary:
        print(reporting.epoch_line(epoch + 1, epoch_metrics), flush=True)

  test = evaluate(runner, state.params, task.eval_batches("test"))
  writer.write(step, {"test_accuracy": test["accuracy"], "test_loss": test["loss"]}, kind="eval")
  ckpt.wait()
  summary = {
      "config": json.loads(config.to_json_best_effort()),
      "test_accuracy": test["accuracy"], "test_loss": test["loss"],
      "best_validation_accuracy": best_val if best_val >= 0 else None,
      "final_validation_accuracy": epoch_metrics.get("validation_accuracy"),
      "num_params": num_params, "steps": step, "epochs": config.num_epochs,
      "wall_time_s": time.perf_counter() - start_time,
      "train_examples_per_s": train_examples / train_time if train_time else None,
      "compile_time_s": compile_time, "resumed_from_step": first_step,
      "devices": jax.device_count(), "parallel": runner.mode,
      "nonfinite_steps_skipped": int(jax.device_get(runner.get_state(state).nonfinite_steps)),
  }
  if primary:
    reporting.write_summary(workdir, summary)
    if config.plots:
      reporting.plot_curves(workdir)
    print(f"test accuracy {test['accuracy']:.4f}  (loss {test['loss']:.4f}; "
          f"{summary['wall_time_s']:.0f} s)", flush=True)
  return summary


def diagnostics_batch(task: data.Task, max_examples: int = 256) -> Batch:
  """The fixed batch diagnostics are computed on: the first validation batch (the first train
  batch of epoch 0 without a validation split), cut to `max_examples` rows."""
  if task.num_eval_examples("validation") > 0:
    batch = next(task.eval_batches("validation"))
  else:
    batch = next(task.train_batches(0))
  return {k: v[:max_examples] for k, v in batch.items()}


@jax.jit
def _add_step_metrics(totals: Metrics, metrics: Metrics) -> Metrics:
  finite = jnp.isfinite(metrics["loss"])
  sums = {k: totals[k] + jnp.where(finite, v, 0.0) for k, v in metrics.items()}
  return {**sums, "steps": totals["steps"] + finite.astype(jnp.int32)}


def add_step_metrics(totals: Metrics | None, metrics: Metrics,
                     names: tuple[str, ...] = ("loss", "accuracy")) -> Metrics:
  """Running sums over the epoch of the step metrics `names`, kept on the device (no sync).

  Steps whose loss is not finite (skipped updates) are left out. Leaves may carry a leading
  axis (vmapped seeds): sums are then per row.
  """
  metrics = {k: metrics[k] for k in names}
  if totals is None:
    totals = {**jax.tree.map(jnp.zeros_like, metrics),
              "steps": jnp.zeros(jnp.shape(metrics["loss"]), jnp.int32)}
  return _add_step_metrics(totals, metrics)


def epoch_train_means(totals: Metrics | None) -> dict[str, Any]:
  """"train_<name>": the mean over every finite step of the epoch that this process ran
  (after a mid-epoch resume: the steps since the resume; None if none counted), and
  "train_steps", their number."""
  if totals is None:
    return {"train_loss": None, "train_steps": 0}
  host = jax.device_get(totals)
  steps = int(host.pop("steps"))
  means = {f"train_{k}": float(v) / steps if steps else None for k, v in host.items()}
  return {**means, "train_steps": steps}


def _host_metrics(metrics: Metrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def check_finite(state: TrainState, config: ml_collections.ConfigDict,
                 ckpts: list[checkpoints.Checkpoints]) -> None:
  """With nonfinite='stop', raises at the first check after a NaN/Inf step.

  The bad update itself was never applied (`apply_if_finite`), and every training loop calls
  this before each save, so the last checkpoint on disk is the last one before the bad step.
  `state` may carry a leading axis (pmap replicas, or vmapped seeds with one checkpoint
  directory each in `ckpts`); the first row with a bad step is reported.
  """
  if config.nonfinite != "stop":
    return
  counts, firsts = (np.ravel(x) for x in jax.device_get(
      (state.nonfinite_steps, state.first_nonfinite_step)))
  bad = np.flatnonzero(counts)
  if len(bad):
    row = int(bad[0])
    ckpt = ckpts[row] if len(ckpts) > 1 else ckpts[0]
    seed = f" (vmapped seed index {row})" if len(ckpts) > 1 else ""
    raise NonFiniteLossError(
        f"Loss or gradient became NaN/Inf at step {int(firsts[row])}{seed}. The last good "
        f"checkpoint is step {ckpt.latest_step()} in {ckpt.directory}. Lower "
        "--config.learning_rate, set --config.grad_clip_norm (e.g. 1.0), or set "
        "--config.nonfinite=skip to skip such steps.")
