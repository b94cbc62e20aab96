"""Tests for rnn_jax/checkpoints.py: exact round trips, pruning, best-k, and recovery
from kills, corruption and write failures, all on real files."""

import gc
import glob
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnn_jax.checkpoints import CheckpointError, Checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: Any
  rng: jax.Array  # jax.random.key_data(...): uint32 [2]
  extras: dict


_TX = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
_update = jax.jit(_TX.update)  # one compile instead of one per op: keeps the tests fast


def make_state(seed: int = 0, step: int = 7) -> TrainState:
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.standard_normal(shape, np.float32)
  params = {
      'cell': {'w_x': normal(3, 8), 'w_h': normal(2, 8), 'b': np.zeros(8, np.float32)},
      'head': {'w': normal(2, 5).astype(jnp.bfloat16)},
  }
  params = jax.tree.map(jnp.asarray, params)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
  _, opt_state = _update(grads, _TX.init(params), params)  # non-trivial mu, nu, count
  return TrainState(
      step=jnp.asarray(step, jnp.int32),
      params=params,
      opt_state=opt_state,
      rng=jax.random.key_data(jax.random.key(seed + 100)),
      extras={'raw_key': jax.random.PRNGKey(seed + 200),
              'typed_key': jax.random.key(seed + 300),
              'epoch': step // 3},
  )


def assert_bitwise_equal(restored, expected):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for r, e in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    if isinstance(e, jax.Array) and jnp.issubdtype(e.dtype, jax.dtypes.prng_key):
      assert r.dtype == e.dtype
      r, e = jax.random.key_data(r), jax.random.key_data(e)
    if isinstance(e, (int, float)):
      assert type(r) is type(e) and r == e
      continue
    r, e = np.asarray(r), np.asarray(e)
    assert r.dtype == e.dtype and r.shape == e.shape
    assert r.tobytes() == e.tobytes()


def step_dirs(directory, kind='latest'):
  return sorted(int(n) for n in os.listdir(os.path.join(directory, kind)) if n.isdigit())


def test_round_trip_is_bit_exact(tmp_path):
  state = make_state(step=7)
  with Checkpoints(tmp_path) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.restore_latest(state) is None
    assert ckpt.save(7, state)
  with Checkpoints(tmp_path) as ckpt:
    # Abstract target (what a trainer has before init) and a concrete target.
    abstract = jax.eval_shape(lambda: make_state(seed=1, step=0))
    abstract = abstract.replace(extras={**abstract.extras, 'epoch': 0})
    restored, step = ckpt.restore_latest(abstract)
    assert step == 7
    assert_bitwise_equal(restored, state)
    assert isinstance(restored, TrainState)
    restored, _ = ckpt.restore_latest(make_state(seed=1, step=0))
    assert_bitwise_equal(restored, state)


def test_keeps_latest_k_and_resumes_from_newest(tmp_path):
  with Checkpoints(tmp_path, keep=2) as ckpt:
    for step in range(1, 6):
      assert ckpt.save(step, make_state(seed=step, step=step))
    assert ckpt.all_steps() == [4, 5]
    assert step_dirs(tmp_path) == [4, 5]
    assert not ckpt.save(5, make_state())  # already there: skipped, not an error
  with Checkpoints(tmp_path, keep=2) as ckpt:
    assert ckpt.latest_step() == 5
    restored, step = ckpt.restore_latest(make_state())
    assert step == 5
    assert_bitwise_equal(restored, make_state(seed=5, step=5))


def test_every_and_force(tmp_path):
  with Checkpoints(tmp_path, every=2) as ckpt:
    saved = [step for step in range(1, 6) if ckpt.save(step, make_state())]
    assert saved == [2, 4]
    assert ckpt.save(5, make_state(), force=True)
    assert ckpt.all_steps() == [2, 4, 5]


def test_best_k_by_metric(tmp_path):
  accuracies = {1: 0.50, 2: 0.70, 3: 0.60, 4: 0.90, 5: 0.65, 6: float('nan')}
  with Checkpoints(tmp_path, keep_best=2) as ckpt:
    written = [step for step, acc in accuracies.items()
               if ckpt.save_best(step, make_state(seed=step, step=step),
                                 {'validation_accuracy': np.float32(acc),
                                  'validation_loss': jnp.asarray(1 - acc)})]
    # 3 (0.60) enters while only 0.50 and 0.70 are kept; 5 and NaN never rank.
    assert written == [1, 2, 3, 4]
    assert ckpt.best_steps() == [4, 2]
    assert step_dirs(tmp_path, 'best') == [2, 4]
    assert ckpt.best_metrics(4)['validation_accuracy'] == pytest.approx(0.9)
    with pytest.raises(ValueError, match='validation_accuracy'):
      ckpt.save_best(7, make_state(), {'accuracy': 1.0})
  with Checkpoints(tmp_path, keep_best=2) as ckpt:  # ranking survives a restart
    assert ckpt.best_step() == 4
    assert not ckpt.save_best(8, make_state(), {'validation_accuracy': 0.1})
    restored, step = ckpt.restore_best(make_state())
    assert step == 4
    assert_bitwise_equal(restored, make_state(seed=4, step=4))
    assert ckpt.latest_step() is None  # best/ and latest/ are separate


def test_best_min_mode(tmp_path):
  with Checkpoints(tmp_path, keep_best=1, best_metric='loss', best_mode='min') as ckpt:
    for step, loss in [(1, 0.5), (2, 0.3), (3, 0.4)]:
      ckpt.save_best(step, make_state(seed=step), {'loss': loss})
    assert ckpt.best_steps() == [2]
  with pytest.raises(ValueError, match="'max', 'min'"):
    Checkpoints(tmp_path, best_mode='maximum')


def _flip_one_byte(step_dir):
  """One byte of the largest array file, as a bad disk or a stray write would."""
  files = [f for f in glob.glob(os.path.join(step_dir, '**', '*'), recursive=True)
           if os.path.isfile(f)]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, 'r+b') as f:
    f.seek(os.path.getsize(biggest) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x10]))


def _big(seed, step):
  return make_state(seed, step).replace(params={
      'w': jnp.asarray(np.random.default_rng(seed).standard_normal((64, 256), np.float32))})


def _corrupt(step_dir, how):
  files = [f for f in glob.glob(os.path.join(step_dir, '**'), recursive=True)
           if os.path.isfile(f)]
  assert files
  if how == 'truncate_all':
    for f in files:
      open(f, 'wb').close()
  elif how == 'garbage_metadata':
    with open(os.path.join(step_dir, 'default', '_METADATA'), 'wb') as f:
      f.write(os.urandom(64))
  elif how == 'truncate_manifest':
    open(os.path.join(step_dir, 'default', 'manifest.ocdbt'), 'wb').close()
  elif how == 'garbage_array_data':
    biggest = max(files, key=os.path.getsize)
    with open(biggest, 'wb') as f:
      f.write(os.urandom(os.path.getsize(biggest) or 64))
  elif how == 'flip_one_byte':  # Restores silently without the stored checksums.
    _flip_one_byte(step_dir)


# Orbax leaves un-awaited coroutines behind when a restore fails; that is its noise.
ignore_unraisable = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')
ignore_unawaited = pytest.mark.filterwarnings(
    'ignore:coroutine .* was never awaited:RuntimeWarning')


@ignore_unraisable
@ignore_unawaited
@pytest.mark.parametrize(
    'how', ['truncate_all', 'garbage_metadata', 'truncate_manifest', 'garbage_array_data',
            'flip_one_byte'])
def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog, how):
  big = _big
  with Checkpoints(tmp_path) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, big(step, step), record={'step': step})
  _corrupt(os.path.join(tmp_path, 'latest', '3'), how)
  with Checkpoints(tmp_path) as ckpt:
    with caplog.at_level(logging.WARNING):
      restored, step = ckpt.restore_latest(big(0, 0))
    assert step == 2
    assert_bitwise_equal(restored, big(2, 2))
    warning = ' '.join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert 'latest/3 could not be restored' in warning
    # Moved aside, so training can go on and save step 3 again.
    assert os.path.isdir(os.path.join(tmp_path, 'corrupt', 'latest_3'))
    assert ckpt.all_steps() == [1, 2]
    assert ckpt.record(2) == {'step': 2}
    assert ckpt.save(3, big(3, 3))
    assert ckpt.restore_latest(big(0, 0))[1] == 3
  gc.collect()  # release Orbax's un-awaited coroutines while the filter above applies


@ignore_unraisable
@ignore_unawaited
def test_wrong_target_raises_and_moves_nothing(tmp_path):
  with Checkpoints(tmp_path) as ckpt:
    ckpt.save(1, make_state())
    ckpt.save(2, make_state())
    with pytest.raises(CheckpointError, match='same state structure'):
      ckpt.restore_latest({'params': jnp.zeros(3)})
    assert ckpt.all_steps() == [1, 2]
    assert not os.path.exists(os.path.join(tmp_path, 'corrupt'))
  gc.collect()


def test_uncommitted_temporary_checkpoint_is_ignored(tmp_path):
  with Checkpoints(tmp_path) as ckpt:
    ckpt.save(1, make_state(seed=1, step=1))
    ckpt.save(2, make_state(seed=2, step=2))
  # What a kill during the save of step 3 leaves: Orbax's temporary folder, half written.
  latest = os.path.join(tmp_path, 'latest')
  partial = os.path.join(latest, '3.orbax-checkpoint-tmp')
  shutil.copytree(os.path.join(latest, '2'), partial)
  os.remove(os.path.join(partial, 'commit_success.txt'))
  _corrupt(partial, 'truncate_all')
  with Checkpoints(tmp_path) as ckpt:
    assert ckpt.latest_step() == 2
    restored, step = ckpt.restore_latest(make_state())
    assert step == 2
    assert_bitwise_equal(restored, make_state(seed=2, step=2))
    assert ckpt.save(3, make_state(seed=3, step=3))  # the leftover does not block step 3
    assert sorted(os.listdir(latest)) == ['1', '2', '3']


CHILD = textwrap.dedent('''
    import json, os, resource, signal, sys
    import jax, jax.numpy as jnp
    from rnn_jax.checkpoints import Checkpoints, CheckpointError
    mode, directory = sys.argv[1], sys.argv[2]
    small = {'w': jnp.arange(10.0), 'step': jnp.asarray(1)}
    big = {'w': jax.random.normal(jax.random.PRNGKey(0), (200, 500)), 'step': jnp.asarray(2)}
    ckpt = Checkpoints(directory)
    ckpt.save(1, small)
    if mode == 'kill':
        # SIGKILL after every file of step 2 is written but before Orbax commits it: the
        # last moment a kill can hit a save.
        from orbax.checkpoint._src.path import atomicity
        async def killed(self):
            os.kill(os.getpid(), signal.SIGKILL)
        atomicity.AtomicRenameTemporaryPath.finalize = killed
        ckpt.save(2, big)
        print('NOT KILLED')
        sys.exit()
    def attempt(case, step):
        try:
            ckpt.save(step, big)
            print(json.dumps([case, 'SAVED']))
        except CheckpointError as e:
            print(json.dumps([case, str(e)]))
    # Disk full: files may not grow past 20 kB, so writes fail with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    attempt('disk_full', 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    # Unwritable folder. Root ignores permissions, so drop to 'nobody' first.
    os.chmod(os.path.join(directory, 'latest'), 0o555)
    if os.geteuid() == 0:
        os.setgid(65534); os.setuid(65534)
    attempt('unwritable', 3)
''')


def run_child(mode, directory):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO)] + os.environ.get('PYTHONPATH', '').split(os.pathsep)),
             JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-c', CHILD, mode, str(directory)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)


def test_sigkill_before_commit_leaves_no_checkpoint(tmp_path):
  proc = run_child('kill', tmp_path)
  assert proc.returncode == -9, proc.stdout + proc.stderr[-3000:]
  latest = os.path.join(tmp_path, 'latest')
  assert any('orbax-checkpoint-tmp' in n for n in os.listdir(latest)), os.listdir(latest)
  with Checkpoints(tmp_path) as ckpt:
    assert ckpt.all_steps() == [1]
    restored, step = ckpt.restore_latest({'w': jnp.zeros(10), 'step': jnp.asarray(0)})
    assert step == 1 and float(restored['w'][9]) == 9.0
    ckpt.save(2, {'w': jnp.zeros(10), 'step': jnp.asarray(2)})
  assert sorted(os.listdir(latest)) == ['1', '2']  # leftover cleaned up


def test_write_failures_are_clear_and_keep_earlier():
  # Not under pytest's tmp_path: that is private to its owner, and the unwritable case
  # drops root to 'nobody', who must still be able to reach the folder.
  directory = tempfile.mkdtemp(prefix='rnn_jax_ckpt_')
  try:
    os.chmod(directory, 0o755)
    proc = run_child('write_errors', directory)
    results = dict(json.loads(line) for line in proc.stdout.splitlines()
                   if line.startswith('['))
    assert set(results) == {'disk_full', 'unwritable'}, proc.stdout + proc.stderr[-3000:]
    assert f'step 2 to {directory}/latest' in results['disk_full']
    assert 'File too large' in results['disk_full']
    assert f'step 3 to {directory}/latest' in results['unwritable']
    assert 'Permission denied' in results['unwritable']
    for message in results.values():
      assert 'intact (complete steps: [1])' in message
    os.chmod(os.path.join(directory, 'latest'), 0o755)
    with Checkpoints(directory) as ckpt:
      assert ckpt.all_steps() == [1]
      restored, step = ckpt.restore_latest({'w': jnp.zeros(10), 'step': jnp.asarray(0)})
      assert step == 1 and float(restored['w'][9]) == 9.0
  finally:
    shutil.rmtree(directory, ignore_errors=True)


def test_directory_that_cannot_exist(tmp_path):
  (tmp_path / 'a_file').write_text('x')
  with pytest.raises(CheckpointError, match='a_file/ckpt'):
    Checkpoints(tmp_path / 'a_file' / 'ckpt')


@ignore_unraisable
@ignore_unawaited
def test_a_flipped_bit_in_best_is_an_error_that_says_what_to_do(tmp_path):
  with Checkpoints(tmp_path, keep_best=2) as ckpt:
    ckpt.save_best(1, _big(1, 1), {'validation_accuracy': 0.5})
    ckpt.save_best(2, _big(2, 2), {'validation_accuracy': 0.9})
  _flip_one_byte(os.path.join(tmp_path, 'best', '2'))
  with Checkpoints(tmp_path, keep_best=2) as ckpt:
    with pytest.raises(CheckpointError, match=r'best checkpoint .*best/2 is corrupt.*Fix'):
      ckpt.restore_best(_big(0, 0))
    assert os.path.isdir(os.path.join(tmp_path, 'corrupt', 'best_2'))
  gc.collect()


def test_checksums_cover_every_leaf_and_see_one_changed_value():
  from rnn_jax.checkpoints import tree_checksums
  state = make_state()
  sums = tree_checksums(state)
  assert len(sums) == len(jax.tree.leaves(state))
  changed = state.replace(params={**state.params, 'cell': {
      **state.params['cell'], 'b': state.params['cell']['b'].at[3].set(1e-7)}})
  diff = [k for k, v in tree_checksums(changed).items() if sums[k] != v]
  assert diff == ["['params']['cell']['b']"] or diff == [".params['cell']['b']"]


@ignore_unraisable
@ignore_unawaited
def test_a_target_of_another_dtype_is_refused_and_moves_nothing(tmp_path):
  """Orbax casts to the target's dtype: that must read as the wrong target, not corruption."""
  with Checkpoints(tmp_path) as ckpt:
    ckpt.save(1, {'w': jnp.arange(6, dtype=jnp.float32)})
  with Checkpoints(tmp_path) as ckpt:
    with pytest.raises(CheckpointError, match='same state structure'):
      ckpt.restore_latest({'w': jnp.zeros(6, jnp.bfloat16)})
    assert ckpt.all_steps() == [1]
    assert not os.path.exists(os.path.join(tmp_path, 'corrupt'))
  gc.collect()
