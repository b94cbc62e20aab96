"""The training engine: the one loop that trains one run, seeds in lockstep, or the LM.

What differs between a classifier run (`rnn_jax.train`), a group of seeds trained together
under `jax.vmap` (the same module, a leading seed axis on the state) and the stateful-TBPTT
language model (`rnn_jax.lm`, a recurrent state carried from one window to the next) is
handed to `fit` as a `Job`: a step function, the state as that step wants it laid out, the
batches of an epoch and an evaluation function. Everything else happens here, once, for all
of them:

- the workdir (`claim_workdirs`, `open_records`): one run per workdir (a lock), the resume
  check against the config that trained the checkpoint, the data files' digests, config.json
  written only once the data accepted the config, the metrics of a start that saved nothing
  moved aside, a "resume" record of the fields a resume changed;
- the periodic work of the loop (`fit`): train metrics every `log_every_steps` and at each
  epoch's last step, diagnostics every `diagnostics_every_steps`, checkpoints every
  `checkpoint_every_steps` and at each epoch end, the NaN/Inf check before every save, a
  checkpoint and exit on SIGTERM, validation every `eval_every_epochs` (and at the end), the
  best checkpoint, the epoch line, the test evaluation and summary.json.

A `Job` with several rows (vmapped seeds) writes into each row's own workdir exactly what a
one-row job writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from rnn_jax import checkpoints, config as config_lib, reporting, workdir as workdir_lib

Metrics = dict[str, jax.Array]


# ----------------------------------------------------------------------------- the job

@dataclasses.dataclass
class Job:
  """What `fit` trains. Rows: 1 for one run; S for S seeds stepped together (vmapped).

  Attributes:
    configs: one config per row (equal but for `seed`); configs[0] sets the intervals.
    workdirs: one workdir per row, claimed with `claim_workdirs`.
    checkpoints, writers: one per row, from `open_records`.
    state: the train state on the devices, laid out as `step` takes it (a leading seed axis
      for vmapped rows, replicas under pmap). `state.nonfinite_steps` feeds the NaN check.
    step: (state, carry, batch) -> (state, carry, metrics). Metrics hold "loss" and whatever
      else the task logs; with several rows each leaf has a leading row axis.
    batches: (epoch, first step within it) -> the epoch's remaining batches, as `step` takes
      them.
    evaluate: (state, split) -> one {metric: value} per row ({} where the split is empty).
    host_states: state -> one host copy of the train state per row.
    steps_per_epoch, total_steps: the loop stops after total_steps (a budget may end it
      inside an epoch; that step is then treated as an epoch end).
    examples_per_step: examples (or tokens) one step trains on, all rows together (the
      summary's train_examples_per_s counts them all; each row's records its own share).
    first_step: the step the state was restored at (0 for a fresh start).
    compile_time_s: the train step's compile time, for the summary.
    start_time: `time.perf_counter()` when the job began (for wall_time_s).
    summary: fields every row's summary.json carries besides the loop's own.
    carry: the state carried from step to step (the LM's recurrent state), None if none. It is
      saved with each checkpoint, so a run resumed mid-epoch continues exactly.
    zero_carry: the carry at each epoch's first step.
    diagnose: one function per row, params -> diagnostics record, or None for none.
    label: printed before each epoch line (e.g. "[3 seeds] ").
    primary: whether this process prints and writes summaries (process 0).
  """
  configs: Sequence[ml_collections.ConfigDict]
  workdirs: Sequence[str]
  checkpoints: Sequence[checkpoints.Checkpoints]
  writers: Sequence[reporting.MetricWriter]
  state: Any
  step: Callable[[Any, Any, Any], tuple[Any, Any, Metrics]]
  batches: Callable[[int, int], Iterable[Any]]
  evaluate: Callable[[Any, str], list[dict[str, float]]]
  host_states: Callable[[Any], list[Any]]
  steps_per_epoch: int
  total_steps: int
  examples_per_step: int
  first_step: int
  compile_time_s: float
  start_time: float
  summary: dict[str, Any]
  carry: Any = None
  zero_carry: Callable[[], Any] | None = None
  diagnose: Sequence[Callable[[Any], dict[str, Any]]] | None = None
  label: str = ""
  primary: bool = True


def checkpoint_tree(state: Any, carry: Any = None) -> Any:
  """What a checkpoint holds: the train state, and the carry next to it when there is one."""
  return state if carry is None else {"state": state, "carry": carry}


def itstime(step: int, every: int, last: int | None = None) -> bool:
  """Whether periodic work with interval `every` (<= 0: never) is due after `step` steps;
  always at `last` when given (an epoch's or the run's final step)."""
  return (every > 0 and step % every == 0) or (last is not None and step == last)


# ----------------------------------------------------------------------------- the loop

def fit(job: Job) -> list[dict[str, Any]]:
  """Runs `job` to `total_steps`, evaluates on the test split and writes each row's summary.

  Returns one summary per row (what summary.json holds).
  """
  config, rows = job.configs[0], len(job.workdirs)
  spe = job.steps_per_epoch
  state, carry, step = job.state, job.carry, job.first_step
  best_metric = job.checkpoints[0].best_metric
  higher = job.checkpoints[0].best_mode == "max"
  best = [_previous_best(w, best_metric, higher, step) for w in job.workdirs]
  train_time, trained_steps = 0.0, 0
  epoch_records: list[dict[str, Any]] = [{} for _ in range(rows)]

  def host_copies(state, carry):
    """After the NaN check (never save past a NaN: resuming would re-stop there), one host
    copy of the state per row, and of the carry."""
    check_finite(state, config, job.checkpoints)
    return job.host_states(state), None if carry is None else jax.device_get(carry)

  def save(step, hosts, host_carry, force=False):
    for ckpt, host in zip(job.checkpoints, hosts):
      ckpt.save(step, checkpoint_tree(host, host_carry), force=force)

  def exit_for_sigterm(step):
    for ckpt in job.checkpoints:
      ckpt.wait()
    logging.warning("SIGTERM: saved step %d in %s; run the same command to resume.",
                    step, ", ".join(job.workdirs))
    raise SystemExit(143)

  with sigterm_flag() as sigterm:
    while step < job.total_steps:
      epoch = step // spe
      start_in_epoch = step - epoch * spe
      last_step = min((epoch + 1) * spe, job.total_steps)
      if start_in_epoch == 0 and job.zero_carry is not None:
        carry = job.zero_carry()
      epoch_start = time.perf_counter()
      bar = reporting.progress(epoch + 1, spe, initial=start_in_epoch,
                               enabled=None if job.primary and config.progress_bar else False)
      totals, last = None, [{} for _ in range(rows)]
      for batch in job.batches(epoch, start_in_epoch):
        state, carry, metrics = job.step(state, carry, batch)
        totals = add_step_metrics(totals, metrics)
        step += 1
        if itstime(step, config.log_every_steps, last_step):
          host = jax.device_get(metrics)  # Waits for this step: the timing below is honest.
          check_finite(state, config, job.checkpoints)
          rate = ((step - epoch * spe - start_in_epoch) * job.examples_per_step / rows
                  / (time.perf_counter() - epoch_start))  # Per row: each workdir's own rate.
          for i in range(rows):
            last[i] = {k: float(_row(v, i, rows)) for k, v in host.items()}
            last[i]["examples_per_s"] = rate
            job.writers[i].write(step, last[i], kind="train")
          bar.set_metrics(loss=last[0]["loss"], examples_per_s=rate)
        bar.update(1)
        if job.diagnose is not None and itstime(step, config.diagnostics_every_steps):
          for i, host_state in enumerate(job.host_states(state)):
            job.writers[i].write(step, job.diagnose[i](host_state.params), kind="diagnostics")
        if itstime(step, config.checkpoint_every_steps) and step < last_step:
          save(step, *host_copies(state, carry))  # (An epoch's last step: after its evaluation.)
        if step < last_step and _stop_requested(sigterm, step, config.log_every_steps):
          save(step, *host_copies(state, carry), force=True)
          bar.close()
          exit_for_sigterm(step)
        if step >= last_step:
          break
      bar.close()
      if step < last_step:
        raise RuntimeError(
            f"The batches of epoch {epoch + 1} ran out at step {step}, before the epoch's "
            f"last step {last_step} (steps_per_epoch={spe}): the job's `batches` must yield "
            "every remaining step of the epoch.")
      jax.block_until_ready(state)
      epoch_time = time.perf_counter() - epoch_start
      steps_run = step - epoch * spe - start_in_epoch
      train_time += epoch_time
      trained_steps += steps_run
      evaluate = (epoch + 1) % config.eval_every_epochs == 0 or step >= job.total_steps
      val = job.evaluate(state, "validation") if evaluate else [{} for _ in range(rows)]
      # The epoch's records and best checkpoint first, its latest checkpoint last: a kill in
      # between resumes before this step and redoes them (read_metrics keeps the last record
      # of a step), where the other order would resume after the step and lose them.
      hosts, host_carry = host_copies(state, carry)
      for i in range(rows):
        record = {"epoch": epoch + 1,
                  **epoch_train_means(None if totals is None else _row(totals, i, rows)),
                  **{f"last_batch_{k}": last[i][k] for k in ("loss", "accuracy") if k in last[i]},
                  "epoch_time_s": epoch_time,
                  "examples_per_s": steps_run * job.examples_per_step / rows / epoch_time,
                  **{f"validation_{k}": v for k, v in val[i].items() if k != "count"}}
        if best_metric in record:
          value = record[best_metric]
          if best[i] is None or (value > best[i] if higher else value < best[i]):
            best[i] = value
          job.checkpoints[i].save_best(step, checkpoint_tree(hosts[i], host_carry),
                                       {best_metric: value})
        job.writers[i].write(step, record, kind="epoch")
        epoch_records[i] = record
      save(step, hosts, host_carry, force=True)
      if job.primary:
        print(job.label + reporting.epoch_line(epoch + 1, epoch_records[0]), flush=True)
      if _stop_requested(sigterm, step, 1):  # At the epoch's last step: saved above.
        exit_for_sigterm(step)

  test = job.evaluate(state, "test")
  hosts = job.host_states(state)
  wall = time.perf_counter() - job.start_time
  summaries = []
  for i in range(rows):
    results = {f"test_{k}": v for k, v in test[i].items() if k != "count"}
    job.writers[i].write(step, results, kind="eval")
    job.checkpoints[i].wait()
    name = best_metric.removeprefix("validation_")
    summary = {
        "config": json.loads(job.configs[i].to_json_best_effort()), **results,
        f"best_validation_{name}": best[i],
        f"final_validation_{name}": epoch_records[i].get(best_metric),
        **job.summary,
        "steps": step, "epochs": job.configs[i].num_epochs, "wall_time_s": wall,
        "train_examples_per_s": (trained_steps * job.examples_per_step / train_time
                                 if train_time else None),
        "compile_time_s": job.compile_time_s, "resumed_from_step": job.first_step,
        "nonfinite_steps_skipped": int(hosts[i].nonfinite_steps),
    }
    if job.primary:
      reporting.write_summary(job.workdirs[i], summary)
      if job.configs[i].plots:
        reporting.plot_curves(job.workdirs[i])
      shown = "  ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in results.items())
      print(f"{job.label}{shown}  ({wall:.0f} s)", flush=True)
    summaries.append(summary)
  return summaries


def _processes() -> int:
  return jax.process_count()


def _stop_requested(sigterm: dict[str, bool], step: int, every: int) -> bool:
  """Whether to save and exit for a SIGTERM.

  With several processes all must stop at the same step (one stopping alone would wait at
  the checkpoint's barrier for the others, which go on stepping): every `every` steps, the
  same steps on every process, they agree on whether any of them got a SIGTERM.
  """
  if _processes() == 1:
    return sigterm["set"]
  if not itstime(step, every):
    return False
  return bool(np.any(multihost_utils.process_allgather(np.asarray(sigterm["set"]))))


def _row(tree: Any, i: int, rows: int) -> Any:
  """Row i of a tree whose leaves carry a leading row axis (only when rows > 1)."""
  return tree if rows == 1 else jax.tree.map(lambda x: x[i], tree)


def _previous_best(workdir: str, metric: str, higher: bool, first_step: int) -> float | None:
  """The best `metric` of the epochs that the restored checkpoint includes."""
  values = [r[metric] for r in reporting.read_metrics(workdir, "epoch")
            if r["step"] <= first_step and r.get(metric) is not None]
  if not values:
    return None
  return max(values) if higher else min(values)


# ----------------------------------------------------------------------------- metrics

@jax.jit
def _add_step_metrics(totals: Metrics, metrics: Metrics) -> Metrics:
  finite = jnp.isfinite(metrics["loss"])
  sums = {k: totals[k] + jnp.where(finite, v, 0.0) for k, v in metrics.items()}
  return {**sums, "steps": totals["steps"] + finite.astype(jnp.int32)}


def add_step_metrics(totals: Metrics | None, metrics: Metrics,
                     names: tuple[str, ...] = ("loss", "accuracy")) -> Metrics:
  """Running sums over the epoch of the step metrics `names` present in `metrics`, kept on
  the device (no sync).

  Steps whose loss is not finite (skipped updates) are left out. Leaves may carry a leading
  axis (vmapped seeds): sums are then per row.
  """
  metrics = {k: metrics[k] for k in names if k in metrics}
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


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradient became NaN or Inf."""


def check_finite(state: Any, config: ml_collections.ConfigDict,
                 ckpts: Sequence[checkpoints.Checkpoints]) -> None:
  """With nonfinite='stop', raises at the first check after a NaN/Inf step.

  The bad update itself was never applied (`train.apply_if_finite`), and `fit` calls this
  before each save, so the last checkpoint on disk is the last one before the bad step.
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


@contextlib.contextmanager
def sigterm_flag():
  """Yields a dict whose "set" becomes True on SIGTERM, so the loop can save and exit."""
  flag = {"set": False}

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


# ----------------------------------------------------------------------------- the workdir

class ResumeConflictError(ValueError):
  """The workdir holds a run trained with another config."""


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


def check_resume_compatible(workdir: str, config: ml_collections.ConfigDict, *,
                            ignore: tuple[str, ...] = ()) -> None:
  """Refuses to resume a workdir whose checkpoint was trained by a different run.

  Which fields define a run is the schema's (`config.resume_conflicts`): all but how it is
  run (logging, checkpoint intervals, devices); a budget such as num_epochs may grow under a
  constant learning rate, which extends a finished run. A workdir with no checkpoint (a
  first start that failed) may start again with any config. `ignore`: fields the trainer
  does not read.
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


def claim_workdirs(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                   cleanup: contextlib.ExitStack, *, ignore: tuple[str, ...] = ()) -> None:
  """Before anything is loaded: each workdir writable, locked for this process (released by
  `cleanup`), and holding no run of another config (`check_resume_compatible`)."""
  for config, workdir in zip(configs, workdirs):
    check_workdir_writable(workdir)
    cleanup.enter_context(workdir_lib.lock(workdir))
    check_resume_compatible(workdir, config, ignore=ignore)


def run_record(config: ml_collections.ConfigDict,
               data_files: Mapping[str, str] | None = None) -> dict[str, Any]:
  """What every checkpoint of a run carries about it: the config that trained it and the
  SHA-256 of each file its data depends on ({name: path}: the IMDB vocabulary, the pixel
  permutation), which `check_data_files` compares on resume."""
  files = {name: _sha256(path) for name, path in (data_files or {}).items()
           if path and os.path.exists(path)}
  return {"config": json.loads(config.to_json_best_effort()), "data_files": files}


def check_data_files(workdir: str, data_files: Mapping[str, str]) -> None:
  """Refuses to resume when a file the data depends on differs from the checkpoint's: the
  parameters were trained with the old one (a changed vocabulary re-maps every word)."""
  recorded = (recorded_run(workdir) or {}).get("data_files") or {}
  current = run_record(ml_collections.ConfigDict(), data_files)["data_files"]
  changed = [data_files[name] for name, digest in recorded.items()
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


@dataclasses.dataclass
class Records:
  """Per row: the checkpoints, the metric writer, and the config the checkpoint was trained
  with (None for a fresh start)."""
  checkpoints: list[checkpoints.Checkpoints]
  writers: list[reporting.MetricWriter]
  recorded: list[dict[str, Any] | None]

  def note_resume(self, configs: Sequence[ml_collections.ConfigDict], step: int) -> None:
    """A "resume" record in metrics.jsonl naming the fields this start changed."""
    for writer, old, config in zip(self.writers, self.recorded, configs):
      if old is not None:
        changed = config_lib.changed_fields(old, json.loads(config.to_json_best_effort()))
        if changed:
          writer.write(step, {"changed": changed}, kind="resume")


def open_records(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                 data_files: Sequence[Mapping[str, str]], cleanup: contextlib.ExitStack, *,
                 best_metric: str, best_mode: str, primary: bool) -> Records:
  """Once the data accepted the configs: each row's checkpoints (carrying `run_record`) and
  metric writer, closed by `cleanup`; config.json written, and the metrics of an earlier
  start that saved nothing moved aside."""
  ckpts, writers, recorded = [], [], []
  for config, workdir, files in zip(configs, workdirs, data_files):
    check_data_files(workdir, files)
    old = recorded_config(workdir)  # Before config.json is rewritten below.
    if primary and old is None:  # Nothing saved: earlier metrics are a failed attempt's.
      _move_aside_unsaved_attempt(workdir)
    if primary:
      save_config(workdir, config)
    ckpt = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"),
                                   keep=config.keep_checkpoints, keep_best=1,
                                   best_metric=best_metric, best_mode=best_mode,
                                   record=run_record(config, files))
    cleanup.callback(ckpt.close)
    writer = reporting.MetricWriter(workdir, enabled=primary)
    cleanup.callback(writer.close)
    ckpts.append(ckpt)
    writers.append(writer)
    recorded.append(old)
  return Records(ckpts, writers, recorded)


def data_files(metadata: Mapping[str, Any]) -> dict[str, str]:
  """The files a task's data depends on: its metadata's "*_file" entries."""
  return {k: v for k, v in metadata.items() if k.endswith("_file") and v}

