"""Tests for rnn_jax/reporting.py: metrics.jsonl after kills and resumes, TensorBoard
events, plots, the epoch line, the progress bar and the atomic summary."""

import glob
import io
import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import reporting
from rnn_jax.reporting import (MetricWriter, ProgressBar, epoch_line, plot_curves, progress,
                               read_metrics, write_summary)


def test_jsonl_round_trip(tmp_path):
  with MetricWriter(tmp_path, enabled=True, tensorboard=False) as writer:
    writer.write(10, {'loss': np.float32(0.25), 'accuracy': jnp.asarray(0.5),
                      'examples_per_s': 1234, 'grad_norm': float('nan')})
    writer.write(1, {'validation_accuracy': 0.9, 'epoch': np.int64(1)}, kind='epoch')
    with pytest.raises(ValueError, match='reserved'):
      writer.write(11, {'step': 3})
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 2
  train, epoch = read_metrics(tmp_path)
  assert train['step'] == 10 and train['kind'] == 'train'
  assert train['loss'] == 0.25 and train['accuracy'] == 0.5
  assert train['examples_per_s'] == 1234 and math.isnan(train['grad_norm'])
  assert isinstance(train['time'], float)
  assert epoch == {**epoch, 'kind': 'epoch', 'step': 1, 'epoch': 1,
                   'validation_accuracy': 0.9}
  assert read_metrics(tmp_path, kind='epoch') == [epoch]
  assert read_metrics(tmp_path / 'nowhere') == []


def test_truncated_last_line_is_skipped_and_appending_recovers(tmp_path):
  with MetricWriter(tmp_path, enabled=True, tensorboard=False) as writer:
    writer.write(1, {'loss': 1.0})
    writer.write(2, {'loss': 0.5})
  path = tmp_path / 'metrics.jsonl'
  text = path.read_text()
  path.write_text(text[:-12])  # a kill in the middle of writing step 2
  assert [r['step'] for r in read_metrics(tmp_path)] == [1]
  with MetricWriter(tmp_path, enabled=True, tensorboard=False) as writer:
    writer.write(2, {'loss': 0.4})  # must not be glued onto the torn line
  assert [(r['step'], r['loss']) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 0.4)]


def test_records_of_a_killed_run_are_replaced_after_resume(tmp_path):
  with MetricWriter(tmp_path, enabled=True, tensorboard=False) as writer:
    for step in range(1, 11):  # killed after step 10; last checkpoint at step 5
      writer.write(step, {'loss': 1.0})
    writer.write(8, {'train_loss': 1.0}, kind='epoch')
  with MetricWriter(tmp_path, enabled=True, tensorboard=False) as writer:
    for step in range(6, 9):  # resumed at step 5, killed again after step 8
      writer.write(step, {'loss': 2.0})
    writer.write(8, {'train_loss': 2.0}, kind='epoch')
  train = read_metrics(tmp_path, kind='train')
  assert [(r['step'], r['loss']) for r in train] == (
      [(s, 1.0) for s in range(1, 6)] + [(s, 2.0) for s in range(6, 9)])
  assert [(r['step'], r['train_loss']) for r in read_metrics(tmp_path, 'epoch')] == [(8, 2.0)]


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  with MetricWriter(workdir, enabled=False) as writer:
    writer.write(1, {'loss': 1.0})
    writer.flush()
  assert not workdir.exists()


def _read_events(path):
  """TFRecord framing: u64 length, masked crc32c(length), data, masked crc32c(data)."""
  from tensorboard.compat.proto import event_pb2
  from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
  events, data = [], open(path, 'rb').read()
  offset = 0
  while offset < len(data):
    header = data[offset:offset + 8]
    (length,) = struct.unpack('<Q', header)
    assert struct.unpack('<I', data[offset + 8:offset + 12])[0] == masked_crc32c(header)
    body = data[offset + 12:offset + 12 + length]
    footer = data[offset + 12 + length:offset + 16 + length]
    assert struct.unpack('<I', footer)[0] == masked_crc32c(body)
    events.append(event_pb2.Event.FromString(body))
    offset += 16 + length
  return events


def test_tensorboard_event_file(tmp_path):
  with MetricWriter(tmp_path, enabled=True) as writer:
    writer.write(5, {'loss': 0.5, 'accuracy': np.float32(0.75), 'note': 'text'})
    writer.write(6, {'validation_accuracy': 0.8}, kind='epoch')
  files = glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))
  assert len(files) == 1
  events = _read_events(files[0])
  assert events[0].file_version == 'brain.Event:2'
  scalars = {(e.step, v.tag): v.simple_value for e in events[1:] for v in e.summary.value}
  assert scalars == {(5, 'train/loss'): 0.5, (5, 'train/accuracy'): 0.75,
                     (6, 'epoch/validation_accuracy'): pytest.approx(0.8)}


def _write_run(workdir, *, accuracy=True):
  with MetricWriter(workdir, enabled=True, tensorboard=False) as writer:
    for epoch in range(1, 4):
      for step in range((epoch - 1) * 50 + 10, epoch * 50 + 1, 10):
        metrics = {'loss': 1.0 / step}
        if accuracy:
          metrics['accuracy'] = 1 - 1.0 / step
        writer.write(step, metrics)
      metrics = {'epoch': epoch, 'train_loss': 1.0 / epoch, 'validation_loss': 1.1 / epoch,
                 'epoch_time_s': 2.0}
      if accuracy:
        metrics.update(last_batch_accuracy=1 - 0.5 / epoch, validation_accuracy=1 - 0.6 / epoch)
      writer.write(epoch * 50, metrics, kind='epoch')


def _assert_png(path):
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert os.path.getsize(path) > 10_000  # axes, lines and labels, not an empty canvas


def test_plots_are_png(tmp_path):
  _write_run(tmp_path)
  paths = plot_curves(tmp_path)
  assert [os.path.basename(p) for p in paths] == ['loss.png', 'accuracy.png']
  for path in paths:
    assert os.path.dirname(path) == str(tmp_path / 'plots')
    _assert_png(path)


def test_plots_without_accuracy_or_data(tmp_path):
  assert plot_curves(tmp_path / 'empty') == []
  _write_run(tmp_path, accuracy=False)  # regression task
  paths = plot_curves(tmp_path)
  assert [os.path.basename(p) for p in paths] == ['loss.png']
  _assert_png(paths[0])


def test_epoch_line():
  line = epoch_line(3, {'train_loss': 0.12344, 'last_batch_accuracy': np.float32(0.953125),
                        'validation_accuracy': 0.97123, 'epoch_time_s': 12.34,
                        'examples_per_s': 4567.2, 'other': 1})
  assert line == ('epoch 3  train loss 0.1234  last-batch acc 0.9531  val acc 0.9712  '
                  '(12.3 s, 4567 ex/s)')
  assert epoch_line(1, {'train_loss': float('nan')}) == 'epoch 1  train loss nan'


def test_progress_bar():
  out = io.StringIO()
  with progress(2, 100, initial=40, enabled=True, file=out) as bar:
    for loss in (1.0, 0.5, 0.0):
      bar.update(20)
      bar.set_metrics(loss=loss, examples_per_s=4567.4)
    assert bar.running_loss == pytest.approx(0.5)
    bar._bar.refresh()  # pylint: disable=protected-access
  text = out.getvalue()
  assert 'epoch 2' in text and '100/100' in text
  assert 'loss=0.5000' in text and 'ex/s=4567' in text
  quiet = io.StringIO()
  with ProgressBar(10, enabled=False, file=quiet) as bar:
    bar.update(10)
    bar.set_metrics(loss=1.0)
  assert quiet.getvalue() == ''


def test_summary_is_atomic_and_json_safe(tmp_path, monkeypatch):
  summary = {'test_accuracy': np.float32(0.98), 'steps': np.int64(1000),
             'per_seed': np.array([0.5, 0.25]), 'best_step': jnp.asarray(7),
             'config': {'cell': 'lstm', 'bidirectional': np.bool_(True), 'sizes': (1, 2)},
             'workdir': tmp_path}
  path = write_summary(tmp_path, summary)
  assert path == str(tmp_path / 'summary.json')
  loaded = json.loads((tmp_path / 'summary.json').read_text())
  assert loaded == {'test_accuracy': pytest.approx(0.98), 'steps': 1000,
                    'per_seed': [0.5, 0.25], 'best_step': 7,
                    'config': {'cell': 'lstm', 'bidirectional': True, 'sizes': [1, 2]},
                    'workdir': str(tmp_path)}
  assert isinstance(loaded['steps'], int)

  # A failure while writing leaves the previous summary whole and no temporary file.
  def failing_replace(src, dst):
    raise OSError('disk full')
  monkeypatch.setattr(reporting.os, 'replace', failing_replace)
  with pytest.raises(OSError, match='disk full'):
    write_summary(tmp_path, {'test_accuracy': 0.1})
  monkeypatch.undo()
  assert json.loads((tmp_path / 'summary.json').read_text())['steps'] == 1000
  assert sorted(os.listdir(tmp_path)) == ['summary.json']


def test_a_full_disk_while_writing_metrics_is_one_clear_error(tmp_path):
  """Files may not grow past their size now (what a full disk does to appends)."""
  import resource  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  writer = reporting.MetricWriter(tmp_path, tensorboard=False)
  writer.write(1, {'loss': 1.0})
  size = os.path.getsize(tmp_path / 'metrics.jsonl')
  old = resource.getrlimit(resource.RLIMIT_FSIZE)
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (size, old[1]))
  try:
    with pytest.raises(reporting.MetricsWriteError,
                       match=r'Could not write metrics for step 2 .*Fix: free disk space'):
      for _ in range(100):  # Past the buffer: the flush hits the limit.
        writer.write(2, {'loss': 2.0, 'padding': 'x' * 1000})
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, old)
    signal.signal(signal.SIGXFSZ, previous)
  assert [r['step'] for r in reporting.read_metrics(tmp_path)] == [1]


# ----------------------------------------------------------------------------- compare_runs

def _compare_runs():
  import importlib.util
  path = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "compare_runs.py")
  spec = importlib.util.spec_from_file_location("compare_runs", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_compare_runs_puts_steps_on_the_training_clock(tmp_path, capsys, monkeypatch):
  """Two epochs of 10 steps taking 30 s and 50 s: step 5 is at 15 s, step 10 at 30 s, step 15
  at 55 s; a bad --run is refused; an epoch without evaluation is left off the curve; the
  figure is written."""
  compare = _compare_runs()
  epochs = [{"step": 10, "epoch_time_s": 30.0}, {"step": 20, "epoch_time_s": 50.0}]
  np.testing.assert_allclose(compare.training_seconds(epochs, [5, 10, 15, 20]),
                             [15.0, 30.0, 55.0, 80.0])
  np.testing.assert_allclose(compare.trailing_mean([1.0, 3.0, 5.0, 7.0], 2), [1, 2, 4, 6])
  with MetricWriter(tmp_path) as writer:
    for step in (5, 10, 15, 20):
      writer.write(step, {"accuracy": 0.01 * step})
    writer.write(10, {"epoch": 1, "epoch_time_s": 30.0}, kind="epoch")  # Not evaluated.
    writer.write(20, {"epoch": 2, "epoch_time_s": 50.0, "validation_accuracy": 0.5},
                 kind="epoch")
  out = tmp_path / "cmp.png"
  monkeypatch.setattr("sys.argv", ["compare_runs", "--out", str(out),
                                   "--run", f"A=={tmp_path}"])
  with pytest.raises(SystemExit, match="give LABEL=WORKDIR"):
    compare.main()
  monkeypatch.setattr("sys.argv", ["compare_runs", "--out", str(out), "--run", f"A={tmp_path}"])
  compare.main()
  printed = json.loads(capsys.readouterr().out.splitlines()[0])
  assert printed["training_s"] == 80.0 and printed["validation_accuracy"] == 0.5
  assert out.stat().st_size > 0
  monkeypatch.setattr("sys.argv", ["compare_runs", "--out", str(out), "--run", f"A={tmp_path}",
                                   "--metric", "loss"])
  with pytest.raises(SystemExit, match="no epoch record has a validation_loss"):
    compare.main()
