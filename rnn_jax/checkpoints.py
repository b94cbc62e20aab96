"""Checkpoints for resuming and for keeping the best model: a thin layer over Orbax.

Layout under ``directory`` (one Orbax ``CheckpointManager`` per subfolder)::

    latest/<step>/      the newest ``keep`` train states, for resuming after a kill
    best/<step>/        the ``keep_best`` states with the best ``best_metric``
    corrupt/<kind>_<step>[_<time>]/   unreadable checkpoints moved aside on restore

What Orbax guarantees and this module relies on (checked against orbax-checkpoint 0.12.8
and exercised in tests/test_checkpoints.py):

* A step is written into ``<step>.orbax-checkpoint-tmp`` and renamed to ``<step>`` only
  after every file (and ``commit_success.txt``) is written. Orbax lists only final names,
  so a save cut short by SIGKILL, a full disk or a crash is never taken for a complete
  checkpoint; leftover temporary folders are removed when the next run starts
  (``cleanup_tmp_directories``).
* Orbax does not verify what it reads back: a single flipped bit inside array data restores
  silently. So every save stores the SHA-256 of each array (by its path in the tree, with
  dtype and shape) in the step's own metadata, committed with the step, and every restore
  recomputes and compares them. A mismatch, like a truncated or garbage metadata, manifest
  or array file (which raise on restore), is reported with ``logging.warning``; the step is
  moved to ``corrupt/`` and the next older one is tried. A ``best`` step whose arrays fail
  verification is moved aside too, but raises instead of quietly giving the second best (an
  unreadable best step is moved aside and the next best is used, with a warning). A restore
  into a target of another dtype or shape than was saved moves nothing and raises.
* A step may carry a small JSON ``record`` (the trainer stores the run's config there), so
  what produced a checkpoint travels inside it.
* On several processes every process calls save/restore; Orbax writes and deletes from
  the primary process only and synchronizes the others. The one file operation of this
  module (moving a corrupt step aside) also runs on process 0 only, then all processes
  meet at a barrier.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


__all__ = ['Checkpoints', 'CheckpointError']


class CheckpointError(RuntimeError):
  """A checkpoint could not be written, or no saved checkpoint could be read back."""


def latest_record(directory: str | os.PathLike[str]) -> tuple[int, dict[str, Any] | None] | None:
  """(step, record) of the newest complete step in ``directory``/latest, or None if none.

  Reads the step's metadata file directly, without an Orbax manager, so that every process
  of a multi-process run can call it at any time (a manager synchronizes the processes).
  The record is None for a step written before records existed.
  """
  folder = os.path.join(os.fspath(directory), 'latest')
  try:
    names = os.listdir(folder)
  except OSError:
    return None
  for step in sorted((int(n) for n in names if n.isdigit()), reverse=True):
    step_dir = os.path.join(folder, str(step))
    if not os.path.exists(os.path.join(step_dir, 'commit_success.txt')):
      continue  # Not a finished write.
    try:
      with open(os.path.join(step_dir, '_CHECKPOINT_METADATA'), encoding='utf-8') as f:
        metadata = json.load(f)
    except (OSError, ValueError):
      return step, None
    return step, (metadata.get('custom_metadata') or {}).get('record')
  return None


class ChecksumMismatch(ValueError):
  """A restored array differs from the one that was saved (the files were altered)."""


def tree_checksums(tree: PyTree) -> dict[str, str]:
  """{path in the tree: "<dtype><shape>:<SHA-256 of the leaf's bytes>"}, for verification.

  The dtype and shape are kept apart from the digest, so that a restore into a target of
  another dtype or shape (Orbax casts) reads as a mismatched target, not as corruption.

  Leaves that this process cannot read whole (arrays sharded over several hosts) are left
  out; every other leaf is copied to the host.
  """
  sums = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = _host_copy(leaf)
    if array is None:
      continue
    digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
    sums[jax.tree_util.keystr(path)] = f'{array.dtype.str}{array.shape}:{digest}'
  return sums


def _host_copy(leaf: Any) -> np.ndarray | None:
  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    shard = leaf.addressable_shards[0].data  # Replicated: one shard holds it all.
    return np.asarray(shard) if shard.shape == leaf.shape else None
  return np.asarray(leaf)


class TargetMismatch(ValueError):
  """The restore target's dtype or shape is not what was saved (the files may be fine)."""


def _checksum_errors(expected: dict[str, str], state: PyTree) -> list[str]:
  """Paths whose bytes differ from the saved ones; raises TargetMismatch when the restored
  leaves have another dtype or shape than the saved ones (Orbax cast them to the target)."""
  got = tree_checksums(state)
  kind = lambda entry: entry.rsplit(':', 1)[0]
  other = [path for path, entry in expected.items() if path in got and kind(got[path]) != kind(
      entry)]
  if other:
    raise TargetMismatch(f'{other[0]} was saved as {kind(expected[other[0]])} and restored as '
                         f'{kind(got[other[0]])}')
  return [path for path, entry in expected.items() if path in got and got[path] != entry]


def _abstract(target: PyTree) -> PyTree:
  """Concrete arrays or ``jax.ShapeDtypeStruct`` leaves -> restore targets.

  Arrays keep their sharding, so a sharded train state is restored sharded; a
  ``ShapeDtypeStruct`` without sharding (from ``jax.eval_shape``) is restored on the
  default device, or as NumPy for Python scalars.
  """
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, target)


def _json_number(value: Any, name: str) -> float:
  """Metrics go into Orbax's JSON step metadata: NumPy and JAX scalars become floats."""
  try:
    return float(np.asarray(value).item())
  except (TypeError, ValueError) as e:
    raise ValueError(
        f'Metric {name!r}={value!r} is not a number; checkpoint metrics must be '
        'scalars (Python, NumPy or JAX). Pass only numeric metrics to save_best.'
    ) from e


class Checkpoints:
  """Latest-k checkpoints for resuming plus best-k checkpoints by a validation metric.

  Every process of a multi-process run must make the same calls (Orbax synchronizes
  them); only process 0 writes.

  Args:
    directory: root folder, e.g. ``<workdir>/checkpoints``; created when missing.
    keep: how many of the newest checkpoints ``save`` keeps (older ones are deleted).
    keep_best: how many checkpoints ``save_best`` keeps, ranked by ``best_metric``.
    best_metric: key of the metrics dict given to ``save_best`` that ranks checkpoints.
    best_mode: 'max' (accuracy-like) or 'min' (loss-like).
    every: ``save(step, ...)`` writes only when ``step % every == 0`` (or ``force``), so
      the trainer can call it every step.
    asynchronous: write in a background thread. Off by default: the train states here
      are small (MBs, tens of ms to write), and a synchronous save means "returned = on
      disk", which keeps preemption handling exact and turns write failures into an
      error at the ``save`` call that caused them. When on, call ``wait()`` before
      relying on a save (Orbax also waits before the next one).
    read_only: only restore (e.g. evaluation from a shared folder): nothing is created,
      deleted or moved.
    record: JSON-able facts stored inside every step this object saves (the trainer's run
      config), read back with ``record(step)``; a ``save`` may pass its own instead.
  """

  def __init__(
      self,
      directory: str | os.PathLike[str],
      *,
      keep: int = 3,
      keep_best: int = 1,
      best_metric: str = 'validation_accuracy',
      best_mode: str = 'max',
      every: int = 1,
      asynchronous: bool = False,
      read_only: bool = False,
      record: dict[str, Any] | None = None,
  ):
    if best_mode not in ('max', 'min'):
      raise ValueError(
          f"best_mode={best_mode!r} is not one of 'max', 'min'. Use 'max' for "
          "accuracy-like metrics and 'min' for loss-like ones."
      )
    for name, value in (('keep', keep), ('keep_best', keep_best), ('every', every)):
      if not isinstance(value, int) or value < 1:
        raise ValueError(f'{name}={value!r} must be an integer >= 1.')
    self.directory = os.path.abspath(os.fspath(directory))
    self.best_metric = best_metric
    self.best_mode = best_mode
    self._keep_best = keep_best
    self._every = every
    self._read_only = read_only
    self._record = record
    self._is_primary = jax.process_index() == 0
    self._barriers = 0

    def options(prefix: str, **kwargs) -> ocp.CheckpointManagerOptions:
      return ocp.CheckpointManagerOptions(
          enable_async_checkpointing=asynchronous,
          cleanup_tmp_directories=not read_only,
          read_only=read_only,
          create=not read_only,
          # Two managers in one program: keep their cross-process barriers apart.
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=prefix
          ),
          **kwargs,
      )

    try:
      self._latest = ocp.CheckpointManager(
          os.path.join(self.directory, 'latest'),
          options=options('latest', max_to_keep=keep),
      )
      self._best = ocp.CheckpointManager(
          os.path.join(self.directory, 'best'),
          options=options(
              'best',
              max_to_keep=keep_best,
              best_fn=lambda metrics: metrics[best_metric],
              best_mode=best_mode,
              keep_checkpoints_without_metrics=False,
          ),
      )
    except OSError as e:
      raise CheckpointError(
          f'Cannot use checkpoint directory {self.directory}: '
          f'{type(e).__name__}: {e}. Fix: choose a workdir on a writable filesystem '
          '(or pass read_only=True to only restore).'
      ) from e

  # -- queries ----------------------------------------------------------------------

  def latest_step(self) -> int | None:
    """Newest complete step in latest/, or None when nothing was saved yet."""
    return self._latest.latest_step()

  def all_steps(self) -> list[int]:
    """Complete steps in latest/, oldest first."""
    return sorted(self._latest.all_steps())

  def best_steps(self) -> list[int]:
    """Steps in best/, best first (by ``best_metric`` and ``best_mode``)."""
    ranked = [(self._metric(step), step) for step in self._best.all_steps()]
    ranked = [(value, step) for value, step in ranked if value is not None]
    ranked.sort(key=lambda vs: (-vs[0] if self.best_mode == 'max' else vs[0], vs[1]))
    return [step for _, step in ranked]

  def best_step(self) -> int | None:
    steps = self.best_steps()
    return steps[0] if steps else None

  def best_metrics(self, step: int) -> dict[str, float] | None:
    """The metrics dict stored with best/<step>."""
    return self._best.metrics(step)

  def record(self, step: int, kind: str = 'latest') -> dict[str, Any] | None:
    """The ``record`` saved inside <kind>/<step> (None for none, or an older checkpoint)."""
    manager = self._latest if kind == 'latest' else self._best
    return (self._custom_metadata(manager, step) or {}).get('record')

  @staticmethod
  def _custom_metadata(manager, step: int) -> dict[str, Any] | None:
    try:
      return manager.metadata(step).custom_metadata
    except Exception:  # No or unreadable step metadata: the restore reports the damage.
      return None

  def _metric(self, step: int) -> float | None:
    metrics = self._best.metrics(step)
    if not metrics or self.best_metric not in metrics:
      return None
    return float(metrics[self.best_metric])

  # -- saving -----------------------------------------------------------------------

  def save(self, step: int, state: PyTree, *, force: bool = False,
           record: dict[str, Any] | None = None) -> bool:
    """Saves ``state`` as latest/<step> if ``step % every == 0`` or ``force``.

    Returns whether a checkpoint was written. A step that is already saved (e.g. the
    step a run resumed from) is skipped. Raises CheckpointError when writing fails;
    earlier checkpoints are left intact. ``record``: JSON-able facts stored inside the
    step (see ``record``), e.g. the config that trained it.
    """
    step = int(step)
    if step in self._latest.all_steps():
      logging.info('Checkpoint step %d already in %s/latest; not saved again.',
                   step, self.directory)
      return False
    if not force and step % self._every:
      return False
    return self._save(self._latest, 'latest', step, state, record=record)

  def save_best(self, step: int, state: PyTree, metrics: dict[str, Any],
                record: dict[str, Any] | None = None) -> bool:
    """Saves ``state`` as best/<step> if ``metrics[best_metric]`` ranks in the top k.

    Returns whether a checkpoint was written (one that would be pruned at once is not
    written at all). A NaN metric is never best.
    """
    step = int(step)
    if self.best_metric not in metrics:
      raise ValueError(
          f'save_best needs metric {self.best_metric!r} (best_metric), got only '
          f'{sorted(metrics)}. Pass it in metrics or construct Checkpoints with '
          f'best_metric set to one of those.'
      )
    metrics = {name: _json_number(value, name) for name, value in metrics.items()}
    value = metrics[self.best_metric]
    if math.isnan(value):
      logging.warning('Not saving step %d as best: %s is NaN.', step, self.best_metric)
      return False
    if step in self._best.all_steps():
      return False
    kept = [self._metric(s) for s in self._best.all_steps()]
    kept = [k for k in kept if k is not None]
    if len(kept) >= self._keep_best:
      worst = min(kept) if self.best_mode == 'max' else max(kept)
      better = value > worst if self.best_mode == 'max' else value < worst
      if not better:
        return False
    return self._save(self._best, 'best', step, state, metrics=metrics, record=record)

  def _save(self, manager, kind: str, step: int, state: PyTree,
            metrics: dict[str, float] | None = None,
            record: dict[str, Any] | None = None) -> bool:
    if self._read_only:
      raise CheckpointError(
          f'Checkpoints({self.directory}) was opened with read_only=True; cannot save '
          f'step {step}. Open it with read_only=False to save.'
      )
    try:
      # force: when to save is decided here (``every``, top-k), not by Orbax's policy,
      # which would also save the first step of every run.
      metadata = {'checksums': tree_checksums(state),
                  'record': self._record if record is None else record}
      return bool(manager.save(step, args=ocp.args.StandardSave(state),
                               metrics=metrics, force=True, custom_metadata=metadata))
    except Exception as e:  # TensorStore reports I/O failures as ValueError.
      raise self._write_error(manager, kind, step, e) from e

  def _write_error(self, manager, kind: str, step: int | None,
                   e: Exception) -> CheckpointError:
    folder = os.path.join(self.directory, kind)
    intact = sorted(manager.all_steps())
    what = 'a checkpoint' if step is None else f'checkpoint step {step}'
    return CheckpointError(
        f'Could not write {what} to {folder}: {type(e).__name__}: {e}. '
        f'Earlier checkpoints there are intact (complete steps: {intact or "none"}); the '
        'partial write is in a temporary folder that is never read and is removed on the '
        'next start. Fix: free disk space or make the folder writable, then resume.'
    )

  # -- restoring --------------------------------------------------------------------

  def restore_latest(self, target: PyTree) -> tuple[PyTree, int] | None:
    """Restores the newest readable checkpoint into the structure of ``target``.

    ``target`` is a train state or its ``jax.eval_shape``: leaves are arrays or
    ``jax.ShapeDtypeStruct`` (shape, dtype and sharding are taken from it). Returns
    ``(state, step)``, or None when nothing was saved. An unreadable newest checkpoint
    is reported with ``logging.warning``, moved to corrupt/, and the next older one is
    used. Raises CheckpointError when checkpoints exist but none can be read.
    """
    return self._restore_first(self._latest, 'latest',
                               sorted(self._latest.all_steps(), reverse=True), target)

  def restore_best(self, target: PyTree) -> tuple[PyTree, int] | None:
    """Restores the best readable checkpoint, as ``(state, step)``; None if none."""
    return self._restore_first(self._best, 'best', self.best_steps(), target)

  def _restore_first(self, manager, kind: str, steps: list[int],
                     target: PyTree) -> tuple[PyTree, int] | None:
    if not steps:
      return None
    abstract = _abstract(target)
    failures: list[tuple[int, Exception]] = []
    altered: list[int] = []  # Restored, but not the arrays that were saved.
    for step in steps:
      try:
        state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        # Unreadable metadata raises here, as damage; readable metadata without checksums is
        # a step written before they existed.
        expected = (manager.metadata(step).custom_metadata or {}).get('checksums')
        if expected is None:
          logging.warning('Checkpoint %s/%s/%d has no checksums (written by an older '
                          'version); it is used unverified.', self.directory, kind, step)
        elif bad := _checksum_errors(expected, state):
          altered.append(step)
          raise ChecksumMismatch(
              f'{len(bad)} array(s) differ from what was saved, e.g. {bad[0]}')
      except Exception as e:  # Corruption surfaces as JSON, Unicode or TensorStore errors.
        logging.warning(
            'Checkpoint %s/%s/%d could not be restored (%s: %s); trying the next one.',
            self.directory, kind, step, type(e).__name__, str(e)[:500])
        failures.append((step, e))
        if kind == 'best' and altered:
          self._quarantine(manager, kind, altered)
          raise CheckpointError(
              f'The best checkpoint {self.directory}/best/{step} is corrupt ({e}); it was '
              f'moved to {self.directory}/corrupt/. Fix: use the latest checkpoint '
              '(restore_latest), or retrain to get a best checkpoint again.') from e
        continue
      if failures:
        # An older step restored with the same target, so the failures were the files,
        # not the target: move them aside so a later save of the same step can happen.
        self._quarantine(manager, kind, [s for s, _ in failures])
      return state, step
    if altered:  # Verified corrupt whatever the target: move those aside even so.
      self._quarantine(manager, kind, altered)
    # Nothing restored: more likely a target that does not match what was saved than
    # every checkpoint corrupt, so nothing is moved.
    details = '; '.join(f'step {s}: {type(e).__name__}: {str(e)[:300]}'
                        for s, e in failures)
    raise CheckpointError(
        f'None of the checkpoints in {os.path.join(self.directory, kind)} could be '
        f'restored ({details}). Fix: restore with the same state structure (model, '
        'optimizer and their configs) that was saved, or move that folder aside to '
        'start from scratch.'
    ) from failures[-1][1]

  def _quarantine(self, manager, kind: str, steps: list[int]) -> None:
    if self._read_only:
      return
    if self._is_primary:
      corrupt = os.path.join(self.directory, 'corrupt')
      os.makedirs(corrupt, exist_ok=True)
      for step in steps:
        source = os.path.join(self.directory, kind, str(step))
        dest = os.path.join(corrupt, f'{kind}_{step}')
        if os.path.exists(dest):
          dest += datetime.datetime.now().strftime('_%Y%m%d-%H%M%S-%f')
        try:
          os.replace(source, dest)
          logging.warning('Moved unreadable checkpoint %s to %s.', source, dest)
        except OSError as e:
          logging.warning('Could not move unreadable checkpoint %s aside: %s', source, e)
    # Barrier names must never repeat; every process restores in the same order.
    self._barriers += 1
    ocp.multihost.sync_global_processes(
        f'rnn_jax_checkpoints_quarantine_{kind}_{self._barriers}')
    manager.reload()

  # -- lifecycle --------------------------------------------------------------------

  def wait(self) -> None:
    """Blocks until background saves (``asynchronous=True``) are on disk."""
    for kind, manager in (('latest', self._latest), ('best', self._best)):
      try:
        manager.wait_until_finished()
      except Exception as e:
        raise self._write_error(manager, kind, None, e) from e

  def close(self) -> None:
    self.wait()
    self._latest.close()
    self._best.close()

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
