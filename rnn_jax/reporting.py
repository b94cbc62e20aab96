"""What a training run reports: metrics.jsonl, TensorBoard scalars, a progress bar, the
per-epoch line, PNG curves and summary.json.

Files under the workdir::

    metrics.jsonl        one JSON object per line: {"step", "kind", "time", **metrics};
                         the record of truth, appended and flushed line by line
    tensorboard/         events.out.tfevents.* with scalars tagged "<kind>/<name>"
    plots/loss.png       step cost and epoch cost side by side
    plots/accuracy.png   accuracy per epoch and batch accuracy per step
    summary.json         final results, replaced atomically

Kinds written by the trainer: 'train' (per log interval), 'epoch', 'eval', 'diagnostics'.
Only one process of a multi-process run should write (``enabled`` defaults to process 0).

TensorBoard events are written with the ``tensorboard`` package's record writer and
protos on a plain file, not through TensorFlow: no multi-second TensorFlow import, no
TensorFlow grabbing the GPUs, and every scalar is flushed with its JSON line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import numpy as np

__all__ = [
    'MetricWriter', 'read_metrics', 'ProgressBar', 'progress', 'epoch_line', 'plot_curves',
    'write_summary', 'to_json_safe',
]

METRICS_FILE = 'metrics.jsonl'
RESERVED_KEYS = ('step', 'kind', 'time')


def _is_primary() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def to_json_safe(obj: Any) -> Any:
  """NumPy/JAX scalars and arrays -> Python numbers and lists, recursively.

  Mappings become dicts with str keys, tuples and sets become lists, anything else
  without a JSON form becomes ``str(obj)``. NaN and infinities stay floats (Python's
  json writes them as NaN/Infinity and reads them back).
  """
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  if isinstance(obj, Mapping):
    return {str(k): to_json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple, set, frozenset)):
    return [to_json_safe(v) for v in obj]
  if isinstance(obj, np.generic) or hasattr(obj, '__array__'):
    try:
      return np.asarray(obj).tolist()  # 0-d arrays give a Python scalar
    except Exception:  # e.g. typed PRNG keys: fall through to str
      pass
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  return str(obj)


class _EventFile:
  """Scalars in TensorBoard's event-file format (TFRecord-framed ``Event`` protos)."""

  def __init__(self, directory: str):
    # Imported here: TensorBoard is optional; the JSON lines do not depend on it.
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    os.makedirs(directory, exist_ok=True)
    # TensorBoard only reads files named *tfevents*; a resumed run adds a new file.
    name = (f'events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.'
            f'{os.getpid()}.rnn_jax')
    self.path = os.path.join(directory, name)
    self._file = open(self.path, 'ab')
    self._records = RecordWriter(self._file)
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())

  def scalars(self, step: int, wall_time: float, values: dict[str, float]) -> None:
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=tag, simple_value=value)
        for tag, value in values.items()])
    self._write(self._event_pb2.Event(step=step, wall_time=wall_time, summary=summary))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


_warned_no_tensorboard = False


class MetricsWriteError(OSError):
  """metrics.jsonl or the TensorBoard events could not be written."""


class MetricWriter:
  """Appends metrics to ``<workdir>/metrics.jsonl`` and TensorBoard (``<workdir>/tensorboard``).

  Args:
    workdir: run directory (created when missing).
    enabled: write at all; None (default) means "only on process 0", so every process
      can make the same calls. A disabled writer creates no files.
    tensorboard: also write TensorBoard scalars. If the ``tensorboard`` package cannot
      be imported, a warning is logged once and only the JSON lines are written.

  Each ``write`` is one ``write()`` of one line followed by a flush, so a kill loses at
  most the line being written; ``read_metrics`` skips such a truncated line.
  """

  def __init__(self, workdir: str | os.PathLike[str], *, enabled: bool | None = None,
               tensorboard: bool = True):
    self.workdir = os.fspath(workdir)
    self.enabled = _is_primary() if enabled is None else bool(enabled)
    self.path = os.path.join(self.workdir, METRICS_FILE)
    self._file: TextIO | None = None
    self._events: _EventFile | None = None
    self._tensorboard = tensorboard

  def _open(self) -> None:
    os.makedirs(self.workdir, exist_ok=True)
    self._file = open(self.path, 'a', encoding='utf-8')
    # A kill mid-line leaves no newline at the end; start on a fresh line so the first
    # record of this run is not glued to the broken one.
    if self._file.tell() > 0:
      with open(self.path, 'rb') as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b'\n':
          self._file.write('\n')
    if self._tensorboard:
      try:
        self._events = _EventFile(os.path.join(self.workdir, 'tensorboard'))
      except ImportError as e:
        global _warned_no_tensorboard
        if not _warned_no_tensorboard:
          logging.warning('TensorBoard unavailable (%s); metrics go to %s only.', e,
                          self.path)
          _warned_no_tensorboard = True

  def write(self, step: int, metrics: Mapping[str, Any], *, kind: str = 'train') -> None:
    """Appends ``{"step": step, "kind": kind, "time": <unix s>, **metrics}``.

    Values may be Python, NumPy or JAX scalars (JAX values are fetched from the device,
    so pass them at log intervals, not every step). Numeric values also go to
    TensorBoard as ``"<kind>/<name>"``.
    """
    clash = [k for k in RESERVED_KEYS if k in metrics]
    if clash:
      raise ValueError(
          f'Metric names {clash} are reserved for the record itself {RESERVED_KEYS}; '
          'rename those metrics.')
    if not self.enabled:
      return
    if self._file is None:
      self._open()
    now = time.time()
    values = to_json_safe(dict(metrics))
    record = {'step': int(step), 'kind': str(kind), 'time': round(now, 3), **values}
    try:
      self._file.write(json.dumps(record) + '\n')
      self._file.flush()
      if self._events is not None:
        scalars = {f'{kind}/{name}': float(value) for name, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
        if scalars:
          self._events.scalars(int(step), now, scalars)
          self._events.flush()
    except OSError as e:  # A full disk, a quota, a folder gone read-only.
      raise MetricsWriteError(
          f'Could not write metrics for step {int(step)} to {self.workdir} ({e.strerror or e}). '
          'The checkpoints already saved are intact, and a line cut short is skipped when '
          'metrics are read. Fix: free disk space (or fix permissions), then run the same '
          'command to resume.') from e

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
      os.fsync(self._file.fileno())
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._file is not None:
      try:
        self.flush()
        self._file.close()
      except OSError as e:  # Already reported by the write that failed; do not mask it.
        logging.warning('Closing %s failed: %s', self.path, e)
      self._file = None
    if self._events is not None:
      self._events.close()
      self._events = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_metrics(workdir: str | os.PathLike[str], kind: str | None = None) -> list[dict]:
  """Records of ``<workdir>/metrics.jsonl`` as they stand after the last resume.

  Unparseable lines (the last line of a killed run) are skipped. A record whose step
  is not after the previous record of the same kind marks a resume from a checkpoint:
  the earlier records of that kind from that step on came from the run that was
  killed, and are dropped. So each (kind, step) appears once, with its latest value.
  Returns [] when the file does not exist; ``kind`` keeps only that kind.
  """
  path = os.path.join(os.fspath(workdir), METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8', errors='replace') as f:
    lines = f.read().split('\n')
  by_kind: dict[str, dict[int, tuple[int, dict]]] = {}
  for number, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      step, record_kind = int(record['step']), str(record['kind'])
    except (ValueError, KeyError, TypeError) as e:  # torn by a kill
      logging.debug('Skipping unreadable line %d of %s: %s', number + 1, path, e)
      continue
    records = by_kind.setdefault(record_kind, {})
    if records and step <= max(records):
      for stale in [s for s in records if s >= step]:
        del records[stale]
    records[step] = (number, record)
  kept = [nr for k, records in by_kind.items() if kind in (None, k)
          for nr in records.values()]
  return [record for _, record in sorted(kept, key=lambda nr: nr[0])]


class ProgressBar:
  """A tqdm bar for one epoch: steps done, the running loss and examples/s.

  Args:
    total: steps in the epoch (None if unknown).
    desc: label, e.g. 'epoch 3'.
    initial: steps already done (resuming mid-epoch).
    enabled: None (default) shows the bar on process 0 when its output is a terminal;
      True always shows it, False never does.
    file: stream for the bar (default stderr).

  Call ``update(n)`` every step (cheap, no device sync) and ``set_metrics(loss=...,
  examples_per_s=...)`` when those values are already on the host (log intervals);
  the bar shows the mean of the losses given so far.
  """

  def __init__(self, total: int | None = None, *, desc: str = '', initial: int = 0,
               enabled: bool | None = None, file: TextIO | None = None):
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    if enabled is None:
      disable = None if _is_primary() else True  # None: tqdm turns off without a TTY
    else:
      disable = not enabled
    self._bar = tqdm(total=total, desc=desc, initial=initial, unit='step',
                     dynamic_ncols=True, leave=False, disable=disable, file=file)
    self._loss_sum = 0.0
    self._loss_count = 0

  def update(self, n: int = 1) -> None:
    self._bar.update(n)

  def set_metrics(self, *, loss: float | None = None,
                  examples_per_s: float | None = None, **others: Any) -> None:
    if loss is not None:
      self._loss_sum += float(loss)
      self._loss_count += 1
    shown = {}
    if self._loss_count:
      shown['loss'] = f'{self.running_loss:.4f}'
    if examples_per_s is not None:
      shown['ex/s'] = f'{float(examples_per_s):.0f}'
    shown.update({k: f'{float(v):.4g}' for k, v in others.items()})
    self._bar.set_postfix(shown, refresh=False)

  @property
  def running_loss(self) -> float:
    """Mean of the losses given this epoch (NaN before the first)."""
    return self._loss_sum / self._loss_count if self._loss_count else math.nan

  def close(self) -> None:
    self._bar.close()

  def __enter__(self) -> ProgressBar:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def progress(epoch: int, steps: int | None, *, initial: int = 0,
             enabled: bool | None = None, file: TextIO | None = None) -> ProgressBar:
  """The bar for epoch ``epoch`` (1-based) of ``steps`` steps; see ProgressBar."""
  return ProgressBar(steps, desc=f'epoch {epoch}', initial=initial, enabled=enabled,
                     file=file)


# (metric, label) in the order epoch_line prints them.
_EPOCH_FIELDS = (
    ('train_loss', 'train loss'),
    ('train_accuracy', 'train acc'),
    ('last_batch_accuracy', 'last-batch acc'),
    ('validation_loss', 'val loss'),
    ('validation_accuracy', 'val acc'),
    ('validation_perplexity', 'val ppl'),
    ('test_loss', 'test loss'),
    ('test_accuracy', 'test acc'),
)


def epoch_line(epoch: int, metrics: Mapping[str, Any]) -> str:
  """One line per epoch, e.g.
  'epoch 3  train loss 0.1234  last-batch acc 0.9531  val acc 0.9712  (12.3 s, 4567 ex/s)'.

  Uses whichever of train_loss, train_accuracy, last_batch_accuracy, validation_loss,
  validation_accuracy, validation_perplexity, test_loss, test_accuracy, epoch_time_s and examples_per_s are
  present (the 'epoch' record the trainer writes).
  """
  parts = [f'epoch {int(epoch)}']
  for key, label in _EPOCH_FIELDS:
    if metrics.get(key) is not None:
      parts.append(f'{label} {float(metrics[key]):.4f}')
  timing = []
  if metrics.get('epoch_time_s') is not None:
    timing.append(f'{float(metrics["epoch_time_s"]):.1f} s')
  if metrics.get('examples_per_s') is not None:
    timing.append(f'{float(metrics["examples_per_s"]):.0f} ex/s')
  if timing:
    parts.append(f'({", ".join(timing)})')
  return '  '.join(parts)


def _series(records: Iterable[dict], x: str, y: str) -> tuple[list[float], list[float]]:
  points = [(r[x], r[y]) for r in records
            if isinstance(r.get(y), (int, float)) and r.get(x) is not None]
  return [p[0] for p in points], [p[1] for p in points]


def plot_curves(workdir: str | os.PathLike[str]) -> list[str]:
  """Plots metrics.jsonl into ``<workdir>/plots/``; returns the paths written.

  loss.png: left, the training loss per logged step ('train' loss); right, per epoch
  the mean training loss and the validation loss. accuracy.png: left, per epoch the
  last-batch (or train) and validation accuracy; right, the batch accuracy per logged
  step. A figure with nothing to show (e.g. accuracy for regression) is not written.
  """
  # The object-oriented Agg canvas, not pyplot: no display needed and the caller's
  # matplotlib backend is left alone.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

  workdir = os.fspath(workdir)
  records = read_metrics(workdir)
  train = [r for r in records if r['kind'] == 'train']
  epochs = [r for r in records if r['kind'] == 'epoch']
  for i, r in enumerate(epochs):  # older records may lack the epoch number
    r.setdefault('epoch', i + 1)
  out_dir = os.path.join(workdir, 'plots')
  paths = []

  def figure(name: str, panels) -> None:
    panels = [(title, xlabel, ylabel, [(label, xs, ys) for label, (xs, ys) in lines if xs])
              for title, xlabel, ylabel, lines in panels]
    if not any(lines for *_, lines in panels):
      return
    fig = Figure(figsize=(11, 4), layout='constrained')
    FigureCanvasAgg(fig)
    for i, (title, xlabel, ylabel, lines) in enumerate(panels):
      ax = fig.add_subplot(1, len(panels), i + 1)
      for label, xs, ys in lines:
        ax.plot(xs, ys, label=label, marker='o' if len(xs) <= 30 else None,
                markersize=3)
      ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs
      ax.grid(alpha=0.3)
      if lines:
        ax.legend()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=100)
    paths.append(path)

  figure('loss.png', [
      ('Step cost', 'step', 'loss', [('train batch loss', _series(train, 'step', 'loss'))]),
      ('Epoch cost', 'epoch', 'loss', [
          ('train (epoch mean)', _series(epochs, 'epoch', 'train_loss')),
          ('validation', _series(epochs, 'epoch', 'validation_loss'))]),
  ])
  figure('accuracy.png', [
      ('Accuracy per epoch', 'epoch', 'accuracy', [
          ('train', _series(epochs, 'epoch', 'train_accuracy')),
          ('last batch', _series(epochs, 'epoch', 'last_batch_accuracy')),
          ('validation', _series(epochs, 'epoch', 'validation_accuracy'))]),
      ('Batch accuracy', 'step', 'accuracy',
       [('train batch', _series(train, 'step', 'accuracy'))]),
  ])
  return paths


def write_summary(workdir: str | os.PathLike[str], summary: Mapping[str, Any]) -> str:
  """Writes ``<workdir>/summary.json`` atomically; returns its path.

  The JSON goes to a temporary file in the same folder, is fsynced, then renamed over
  the old summary: a reader or a kill sees the old file or the new one, never half.
  Values are converted with ``to_json_safe``.
  """
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'summary.json')
  text = json.dumps(to_json_safe(summary), indent=2, sort_keys=True) + '\n'
  fd, tmp = tempfile.mkstemp(prefix='.summary.', suffix='.tmp', dir=workdir)
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path
