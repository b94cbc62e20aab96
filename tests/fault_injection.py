"""Fault injection: a real training run killed at random moments, and the bad inputs users hit.

The cases of tests/test_reliability.py (the bad inputs one test each; the kills a slow test,
run by CI), and, for a user who wants the whole report as a table, a command line:

    python scripts/fault_injection.py [--kills 10] [--seed 0] [--workdir DIR] [--keep]

1. Kills. `launch.py` trains a tiny config (the adding problem, T=8, 160 steps, a checkpoint
   every 5 steps) as a subprocess. It is SIGKILLed `--kills` times at random moments drawn
   from `--seed` (during start-up, during training, or while a checkpoint is being written),
   then stopped once with SIGTERM, and each time the same command is run again. The final
   train state (restored from the last checkpoint) must equal that of an uninterrupted run of
   the same command bit for bit. The uninterrupted run goes alongside the first killed runs.
2. Bad inputs, in this process: corrupt and truncated latest checkpoints, an unwritable
   workdir, a disk that fills while saving, NaN losses, bad config values, an incompatible
   resume, bad IMDB reviews and images of the wrong shape. Each must give a clear error (or be
   handled) and leave earlier checkpoints intact; a Markdown table lists what each produced.

Prints `kills survived: N/N, final params identical: yes` and the table; exits 1 if anything
does not hold.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
# JAX's persistent compilation cache, shared by this script's runs (set by main()): the
# uninterrupted run compiles, the killed runs load. Compiling is most of a tiny run's time.
CACHE: dict[str, str] = {}


def child_env() -> dict[str, str]:
  """One CPU device, no GPU: the same XLA program in every process of this script."""
  env = dict(os.environ, **CACHE)
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
  env.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
             TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
             PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
  return env


if __name__ == "__main__":  # Before JAX is imported: this process must match its children.
  os.environ.update(child_env())
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from rnn_jax import checkpoints, data, engine, train  # noqa: E402
from rnn_jax.data import common  # noqa: E402

# The tiny run: 40 steps per epoch, 4 epochs, a checkpoint every 5 steps. Dropout and a cosine
# schedule make the result depend on the step count and the RNG, so a wrong resume shows.
TINY = dict(dataset="adding", sequence_length=8, num_train_examples=320, validation_size=32,
            batch_size=8, eval_batch_size=2000, cell="gru", hidden_size=8, dropout_rate=0.1,
            lr_schedule="cosine", learning_rate=0.01, num_epochs=4, checkpoint_every_steps=5,
            keep_checkpoints=2, log_every_steps=10, progress_bar=False, plots=False,
            parallel="jit", seed=0)
TOTAL_STEPS = 160
MARKER = "Train step compiled"


class CaseFailed(AssertionError):
  """A bad input was not handled as it must be."""


def check(condition: bool, message: str) -> None:
  if not condition:
    raise CaseFailed(message)


def tiny_config(**overrides: Any) -> ml_collections.ConfigDict:
  config = base.get_config()
  for key, value in {**TINY, **overrides}.items():
    config[key] = value
  return config


def command(workdir: str | os.PathLike[str], **overrides: Any) -> list[str]:
  """The launch.py command line of `tiny_config(**overrides)`."""
  flags = [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]
  return [sys.executable, str(REPO / "launch.py"), f"--config={REPO / 'configs' / 'base.py'}",
          f"--workdir={workdir}", *flags]


def first_line(error: BaseException) -> str:
  """The informative first line of an error (the first bullet of an 'Invalid config')."""
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  if len(lines) > 1 and lines[0] == "Invalid config:":
    return lines[1].lstrip("- ")
  return f"{type(error).__name__}: {lines[0] if lines else ''}"


def short(text: str, limit: int = 230) -> str:
  text = " ".join(text.split()).replace("|", "/")
  return text if len(text) <= limit else text[:limit - 3] + "..."


# ----------------------------------------------------------------------------- train states

def restore_final(workdir: str | os.PathLike[str], config=None) -> tuple[Any, int]:
  """(train state, step) of the newest checkpoint in `workdir`, read-only."""
  config = config or tiny_config()
  task = data.load(config, None)
  model = train.build_model(config, task)
  tx, _ = train.build_optimizer(config, task.steps_per_epoch * config.num_epochs)
  target = train.create_train_state(model, tx, config.seed)
  with checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
    restored = ckpt.restore_latest(target)
  check(restored is not None, f"no checkpoint in {workdir}")
  return jax.device_get(restored[0]), restored[1]


def identical(a: Any, b: Any) -> bool:
  """Bitwise equality of two pytrees (NaN == NaN, -0.0 != 0.0)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  if jax.tree.structure(a) != jax.tree.structure(b) or len(la) != len(lb):
    return False
  return all(np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).shape ==
             np.asarray(y).shape and np.asarray(x).tobytes() == np.asarray(y).tobytes()
             for x, y in zip(la, lb))


def train_quietly(config, workdir) -> dict[str, Any]:
  with contextlib.redirect_stdout(open(os.devnull, "w")):
    return train.train_and_evaluate(config, str(workdir))


@contextlib.contextmanager
def warnings_captured():
  """Collects WARNING records of the root and absl loggers."""
  records: list[logging.LogRecord] = []

  class Keep(logging.Handler):
    def emit(self, record):
      records.append(record)

  handler = Keep(logging.WARNING)
  loggers = [logging.getLogger(), logging.getLogger("absl")]
  for logger in loggers:
    logger.addHandler(handler)
  try:
    yield records
  finally:
    for logger in loggers:
      logger.removeHandler(handler)


@contextlib.contextmanager
def patched(obj, name: str, value):
  original = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield original
  finally:
    setattr(obj, name, original)


# ----------------------------------------------------------------------------- bad inputs

@dataclasses.dataclass
class Context:
  """What the cases share: a scratch folder and a finished run of `tiny_config()`."""
  scratch: Path
  reference: Path | None  # The workdir of a finished run of self.config().
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # Of that run's config.
  _reference_state: Any = None

  def config(self, **overrides: Any) -> ml_collections.ConfigDict:
    return tiny_config(**{**self.overrides, **overrides})

  def reference_state(self):
    if self._reference_state is None:
      self._reference_state = restore_final(self.reference, self.config())
    return self._reference_state

  def fresh(self, name: str) -> Path:
    path = self.scratch / name
    shutil.rmtree(path, ignore_errors=True)
    return path

  def copy_of_reference(self, name: str) -> Path:
    path = self.fresh(name)
    shutil.copytree(self.reference, path)
    return path


def _damaged_latest_resumes(ctx: Context, name: str, damage: Callable[[Path], str]) -> str:
  """Damages the newest checkpoint of a finished run; the re-run must warn, fall back to the
  previous checkpoint, and end with the reference parameters."""
  workdir = ctx.copy_of_reference(name)
  latest_dir = workdir / "checkpoints" / "latest"
  steps = sorted(int(p.name) for p in latest_dir.iterdir() if p.name.isdigit())
  check(len(steps) >= 2, f"need two checkpoints, found {steps}")
  what = damage(latest_dir / str(steps[-1]))
  with warnings_captured() as records:
    summary = train_quietly(ctx.config(), workdir)
  warned = [r.getMessage() for r in records if "could not be restored" in r.getMessage()]
  check(bool(warned), "no warning about the unreadable checkpoint")
  check(summary["resumed_from_step"] == steps[-2],
        f"resumed from {summary['resumed_from_step']}, expected {steps[-2]}")
  state, step = restore_final(workdir, ctx.config())
  reference, reference_step = ctx.reference_state()
  check(step == reference_step and identical(state, reference),
        "final state differs from the uninterrupted run")
  return (f"{what}: warning `{short(warned[0], 110)}`; resumed from step {steps[-2]}, "
          f"final params identical")


def case_corrupt_latest(ctx: Context) -> str:
  def damage(step_dir: Path) -> str:
    (step_dir / "default" / "_METADATA").write_bytes(os.urandom(64))
    return f"garbage `_METADATA` in latest/{step_dir.name}"
  return _damaged_latest_resumes(ctx, "corrupt", damage)


def case_truncated_checkpoint(ctx: Context) -> str:
  def damage(step_dir: Path) -> str:
    # The array data (TensorStore's OCDBT files under d/), not the JSON metadata.
    files = [Path(f) for f in glob.glob(str(step_dir / "**" / "d" / "*"), recursive=True)
             if os.path.isfile(f)]
    check(bool(files), f"no array data files in {step_dir}")
    biggest = max(files, key=os.path.getsize)
    size = biggest.stat().st_size
    os.truncate(biggest, size // 2)
    return f"`{biggest.relative_to(step_dir)}` of latest/{step_dir.name} cut to {size // 2} B"
  return _damaged_latest_resumes(ctx, "truncated", damage)


def case_unwritable_workdir(ctx: Context) -> str:
  parent = ctx.fresh("unwritable")
  workdir = parent / "run"
  workdir.mkdir(parents=True)
  os.chmod(parent, 0o755)
  os.chmod(workdir, 0o555)
  start = time.perf_counter()
  as_root = os.geteuid() == 0
  try:
    if as_root:  # Root writes anywhere: drop to 'nobody' for the call.
      os.seteuid(65534)
    train_quietly(tiny_config(), workdir)
  except ValueError as e:
    error = e
  else:
    error = None
  finally:
    if as_root:
      os.seteuid(0)
    os.chmod(workdir, 0o755)
  seconds = time.perf_counter() - start
  check(error is not None, "training ran in an unwritable workdir")
  check("not writable" in str(error) and str(workdir) in str(error), f"unclear: {error}")
  check(not os.listdir(workdir), f"files were created: {os.listdir(workdir)}")
  return f"{first_line(error)} (after {seconds:.1f} s, before any compute)"


def case_disk_full(ctx: Context) -> str:
  """Files may not grow past 1 byte while step 10 is saved: what a full disk does to writes."""
  import resource  # pylint: disable=g-import-not-at-top

  workdir = ctx.fresh("disk_full")
  original = checkpoints.Checkpoints.save

  def save(self, step, state, *, force=False):
    if int(step) != 10:
      return original(self, step, state, force=force)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, old[1]))
    try:
      return original(self, step, state, force=force)
    finally:
      resource.setrlimit(resource.RLIMIT_FSIZE, old)
      signal.signal(signal.SIGXFSZ, previous)

  with patched(checkpoints.Checkpoints, "save", save):
    try:
      train_quietly(tiny_config(log_every_steps=1000), workdir)
    except checkpoints.CheckpointError as e:
      error = e
    else:
      error = None
  check(error is not None, "the failed save went unnoticed")
  check("complete steps: [5]" in str(error), f"unclear: {error}")
  with checkpoints.Checkpoints(workdir / "checkpoints", read_only=True) as ckpt:
    check(ckpt.all_steps() == [5], f"checkpoints now {ckpt.all_steps()}")
  _, step = restore_final(workdir)
  check(step == 5, f"restored step {step}")
  message = str(error)
  reason = re.search(r"(File too large|No space left on device)", message)
  return (f"CheckpointError: Could not write checkpoint step 10 ... "
          f"{reason.group(0) if reason else ''} ... Earlier checkpoints there are intact "
          "(complete steps: [5]); step 5 restores")


def poisoned_train_batches(at_step: int):
  """A `data.Task.train_batches` whose batch that makes step `at_step` has NaN inputs."""
  original = data.Task.train_batches

  def poisoned(self, epoch, start_step=0):
    for i, batch in enumerate(original(self, epoch, start_step)):
      if epoch * self.steps_per_epoch + start_step + i + 1 == at_step:
        batch = dict(batch, inputs=np.full_like(batch["inputs"], np.nan))
      yield batch

  return poisoned


def _poison(at_step: int):
  """Train batches with NaN inputs at the batch that makes step `at_step`, while in use."""
  return patched(data.Task, "train_batches", poisoned_train_batches(at_step))


def case_nan_stop(ctx: Context) -> str:
  workdir = ctx.fresh("nan_stop")
  with _poison(12):
    try:
      train_quietly(tiny_config(num_epochs=1), workdir)
    except engine.NonFiniteLossError as e:
      error = e
    else:
      error = None
  check(error is not None, "NaN loss did not stop the run")
  check("at step 11." in str(error) and "last good checkpoint is step 10" in str(error),
        f"wrong step: {error}")
  state, step = restore_final(workdir, tiny_config(num_epochs=1))
  check(step == 10, f"latest checkpoint is {step}, expected 10")
  check(all(np.isfinite(x).all() for x in jax.tree.leaves(state.params)), "NaN params saved")
  return first_line(error)


def case_nan_skip(ctx: Context) -> str:
  workdir = ctx.fresh("nan_skip")
  with _poison(12):
    summary = train_quietly(tiny_config(num_epochs=1, nonfinite="skip"), workdir)
  check(summary["nonfinite_steps_skipped"] == 1, f"skipped {summary['nonfinite_steps_skipped']}")
  check(np.isfinite(summary["test_loss"]), "test loss not finite")
  return (f"nonfinite='skip': run finished, nonfinite_steps_skipped=1, finite test loss "
          f"{summary['test_loss']:.4f}")


BAD_CONFIGS = [
    {"hiden_size": 8},
    {"hidden_size": -4},
    {"learning_rate": "fast"},
    {"dropout_rate": 1.5},
    {"learning_rate": float("inf")},
    {"cell_options": {"forget_bias": "big"}, "cell": "lstm"},
    {"cell_options": {"forget_bais": 1.0}, "cell": "lstm"},
    {"length_buckets": (-5, 20)},
    {"seed": -1},
    {"batch_size": 7, "eval_batch_size": 10, "_processes": 2},
    {"eval_batch_size": 999, "_processes": 2},
]


def case_bad_configs(ctx: Context) -> str:
  results = []
  for overrides in BAD_CONFIGS:
    overrides = dict(overrides)
    processes = overrides.pop("_processes", 1)
    workdir = ctx.fresh("bad_config")
    # A plain dict, as a hand-written config file gives: ConfigDict's type locking would
    # otherwise stop some of these before validation does.
    config = ml_collections.ConfigDict({**tiny_config().to_dict(), **overrides})
    try:
      if processes == 1:
        train_quietly(config, workdir)
      else:  # What train_and_evaluate checks once it knows the processes.
        train.validate(config)
        train.config_lib.validate_devices(config, processes)
    except ValueError as e:
      results.append(f"`{short(str(overrides), 60)}`{' on 2 processes' if processes > 1 else ''}"
                     f" → {short(first_line(e), 150)}")
    else:
      raise CaseFailed(f"{overrides} was accepted")
    check(not workdir.exists(), f"{overrides}: the workdir was created")
  return "<br>".join(results)


def case_incompatible_resume(ctx: Context) -> str:
  before = sorted(os.listdir(ctx.reference / "checkpoints" / "latest"))
  try:
    train_quietly(ctx.config(hidden_size=16), ctx.reference)
  except ValueError as e:
    error = e
  else:
    error = None
  check(error is not None and "hidden_size: 8 -> 16" in str(error), f"not refused: {error}")
  check(sorted(os.listdir(ctx.reference / "checkpoints" / "latest")) == before,
        "checkpoints changed")
  return short(first_line(error), 200)


# Reviews as tfds gives them (bytes). Row order: the three bad ones, then ordinary ones.
EMPTY, NON_UTF8, OVERLONG = b"", b"caf\xe9 \xff\xfe was great, \x80 loved it", b"good " * 100_000
REVIEWS = [EMPTY, NON_UTF8, OVERLONG] + [
    b"a fine film, i liked it", b"bad acting<br />boring plot", b"great fun", b"dull and slow",
    b"loved the cast", b"the worst film", b"superb", b"awful"] * 2


def fake_read_splits(features: dict[str, Callable[[int], np.ndarray]], n: int):
  """A stand-in for common.read_splits: a custom dataset with the given columns."""
  def read_splits(tfds_name, splits, *, data_dir, download):
    del data_dir, download
    arrays = {split: {k: make(n) for k, make in features.items()} for split in splits}
    return arrays, {"tfds_name": tfds_name, "version": "custom", "data_dir": "custom"}
  return read_splits


_IMDB_RESULT: dict[str, Any] = {}


def _imdb_run(ctx: Context) -> dict[str, Any]:
  """One real run (train, validation, test) on reviews that include the three bad ones."""
  if _IMDB_RESULT:
    return _IMDB_RESULT
  texts = np.array(REVIEWS, dtype=object)
  read = fake_read_splits({"text": lambda n: texts[:n],
                           "label": lambda n: np.arange(n, dtype=np.int64) % 2}, len(REVIEWS))
  config = tiny_config(dataset="imdb_reviews", max_len=12, vocab_size=40, embed_size=4,
                       validation_size=3, batch_size=4, eval_batch_size=4, num_epochs=1,
                       log_every_steps=1, cell="rnn")
  workdir = ctx.fresh("imdb")
  with patched(common, "read_splits", read):
    task = data.load(config, str(workdir))
    summary = train_quietly(config, workdir)
  rows = task.splits["validation"]  # The first validation_size reviews: the three bad ones.
  batch = next(task.eval_batches("validation"))
  _IMDB_RESULT.update(ids=rows["ids"], lengths=rows["lengths"], num_tokens=rows["num_tokens"],
                      batch_shape=batch["inputs"].shape, summary=summary,
                      tokens=data.imdb.tokenize(NON_UTF8))
  check(np.isfinite(summary["test_loss"]) and np.isfinite(summary["final_validation_accuracy"]),
        "non-finite evaluation")
  return _IMDB_RESULT


def case_empty_review(ctx: Context) -> str:
  r = _imdb_run(ctx)
  check(r["lengths"][0] == 1 and r["ids"][0, 0] == data.imdb.OOV_ID, "empty review not one OOV")
  return (f"encoded as one OOV token (length 1); trains and evaluates, finite test loss "
          f"{r['summary']['test_loss']:.4f}")


def case_non_utf8_review(ctx: Context) -> str:
  r = _imdb_run(ctx)
  check("\ufffd" in r["tokens"], "bad bytes not replaced")
  check(1 <= r["lengths"][1] <= 12, "bad length")
  return (f"bad bytes decoded as U+FFFD tokens ({r['tokens'][:4]}...), length "
          f"{r['lengths'][1]}; trains")


def case_overlong_review(ctx: Context) -> str:
  r = _imdb_run(ctx)
  check(r["num_tokens"][2] == 100_000 and r["lengths"][2] == 12, "not truncated to max_len")
  check(r["batch_shape"] == (4, 12), f"batch shape {r['batch_shape']}")
  return "100,000 tokens cut to max_len=12 (truncating='post'); its batch is [4, 12]; trains"


def case_wrong_image_shape(ctx: Context) -> str:
  results = []
  for shape in ((32, 32, 1), (28, 28, 3)):
    read = fake_read_splits({"image": lambda n, s=shape: np.zeros((n,) + s, np.uint8),
                             "label": lambda n: np.zeros(n, np.int64)}, 49)
    workdir = ctx.fresh("images")
    with patched(common, "read_splits", read):
      try:
        train_quietly(tiny_config(dataset="mnist", validation_size=1), workdir)
      except ValueError as e:
        check(str(list(shape)) in str(e) and "'mnist'" in str(e), f"unclear: {e}")
        results.append(short(first_line(e), 200))
      else:
        raise CaseFailed(f"images of shape {shape} were accepted")
  return "<br>".join(results)


def case_custom_loader_shape(ctx: Context) -> str:
  """A loader whose batches are not the shape its Task declares (10 steps, declares 8)."""
  original = data.LOADERS["adding"]

  def loader(config, workdir, **kwargs):
    task = original(config, workdir, **kwargs)
    make = task.make_batch

    def make_batch(arrays, indices, global_indices):
      batch = make(arrays, indices, global_indices)
      return dict(batch, inputs=np.pad(batch["inputs"], ((0, 0), (0, 2), (0, 0))))
    return dataclasses.replace(task, make_batch=make_batch)

  with patched(data, "LOADERS", {**data.LOADERS, "adding": loader}):
    try:
      train_quietly(tiny_config(), ctx.fresh("custom_loader"))
    except ValueError as e:
      check("[8, 10, 2]" in str(e) and "[8, 8, 2]" in str(e), f"unclear: {e}")
      return short(first_line(e), 200)
  raise CaseFailed("a batch of the wrong shape was trained on")


CASES: dict[str, Callable[[Context], str]] = {
    "corrupt latest checkpoint": case_corrupt_latest,
    "truncated checkpoint file": case_truncated_checkpoint,
    "unwritable workdir": case_unwritable_workdir,
    "disk full while saving": case_disk_full,
    "NaN loss (nonfinite='stop')": case_nan_stop,
    "NaN loss (nonfinite='skip')": case_nan_skip,
    "bad config values": case_bad_configs,
    "incompatible resume": case_incompatible_resume,
    "empty review": case_empty_review,
    "non-UTF-8 review": case_non_utf8_review,
    "over-long review": case_overlong_review,
    "wrong image shape (custom mnist)": case_wrong_image_shape,
    "custom loader, batch shape != declared": case_custom_loader_shape,
}


def run_cases(ctx: Context) -> tuple[list[tuple[str, bool, str]], bool]:
  rows, ok = [], True
  for name, case in CASES.items():
    start = time.perf_counter()
    try:
      outcome, passed = case(ctx), True
    except Exception as e:  # pylint: disable=broad-except
      outcome, passed = f"FAILED: {type(e).__name__}: {short(str(e), 300)}", False
      ok = False
    rows.append((name, passed, f"{outcome} ({time.perf_counter() - start:.1f} s)"))
  return rows, ok


# ----------------------------------------------------------------------------- kills

@dataclasses.dataclass
class Proc:
  """A launch.py subprocess whose output goes to a log file."""
  popen: subprocess.Popen
  log: Path
  started: float

  @classmethod
  def start(cls, cmd: list[str], log: Path) -> "Proc":
    with open(log, "w") as f:
      popen = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=f,
                               stderr=subprocess.STDOUT, start_new_session=True)
    return cls(popen, log, time.monotonic())

  def output(self) -> str:
    return self.log.read_text(errors="replace")

  def wait(self, timeout: float = 600) -> int:
    return self.popen.wait(timeout)


def checkpoint_names(workdir: Path) -> list[str]:
  try:
    return os.listdir(workdir / "checkpoints" / "latest")
  except OSError:
    return []


def newest_step(workdir: Path) -> int:
  """The newest step in latest/, complete or being written."""
  steps = [int(n.split(".")[0]) for n in checkpoint_names(workdir) if n.split(".")[0].isdigit()]
  return max(steps, default=0)


def kill_at(proc: Proc, workdir: Path, mode: str, target_step: int, delay: float,
            sig: int = signal.SIGKILL) -> str:
  """Sends `sig` at a moment chosen by `mode`; returns what the run was doing then."""
  deadline = time.monotonic() + 300

  def alive():
    if proc.popen.poll() is not None:
      return False
    check(time.monotonic() < deadline, "run did not reach the kill point in 300 s")
    return True

  started = lambda: MARKER in proc.output()
  if mode == "startup":  # Any moment from launch to compiled: imports, restore, data, compile.
    while alive() and time.monotonic() - proc.started < delay and not started():
      time.sleep(0.005)
  elif mode == "saving":  # The moment a checkpoint write is seen in progress.
    while alive() and not started():
      time.sleep(0.01)
    while alive() and not (newest_step(workdir) >= target_step and any(
        "tmp" in n for n in checkpoint_names(workdir))):
      time.sleep(0.002)
  else:  # "training": a random moment once the run has passed `target_step`.
    while alive() and not (started() and newest_step(workdir) >= target_step):
      time.sleep(0.01)
    end = time.monotonic() + delay
    while alive() and time.monotonic() < end:
      time.sleep(0.005)
  if proc.popen.poll() is not None:
    return "finished before the signal"
  if started():
    STARTUP_SECONDS.append(time.monotonic() - proc.started)
  # Before compiling, a temporary folder can only be a leftover of the previous kill.
  mid_save = started() and any("tmp" in n for n in checkpoint_names(workdir))
  os.killpg(proc.popen.pid, sig)  # Its whole session: nothing of it outlives the kill.
  proc.wait()
  return f"{'startup' if MARKER not in proc.output() else 'training'}" + (
      ", checkpoint write in progress" if mid_save else "")


STARTUP_SECONDS: list[float] = []  # Launch to compiled, as seen so far (the machine's load).


def kill_schedule(kills: int, seed: int) -> list[tuple[str, int, float]]:
  """(mode, target step, delay) per kill: every third at any moment of start-up (delay: a
  fraction of the start-up time seen so far), two while a checkpoint is being written, the
  rest at random moments of training, at target steps spread over the run."""
  rng = random.Random(seed)
  targets = sorted(rng.sample(range(1, TOTAL_STEPS - 40), kills))
  schedule = []
  for i, target in enumerate(targets):
    if i % 3 == 0:
      schedule.append(("startup", 0, rng.uniform(0.02, 1.0)))
    elif i in (1, 4):
      schedule.append(("saving", target, 0.0))
    else:
      schedule.append(("training", target, rng.uniform(0.0, 0.25)))
  return schedule


def run_kills(root: Path, kills: int, seed: int) -> tuple[bool, list[str], Path]:
  """Kills and resumes the tiny run; returns (final state identical?, report lines, ref)."""
  reference, resumed = root / "uninterrupted", root / "killed"
  # First and alone, so that it fills the compilation cache the killed runs read from.
  ref_proc = Proc.start(command(reference), root / "uninterrupted.log")
  while ref_proc.popen.poll() is None and MARKER not in ref_proc.output():
    time.sleep(0.01)
  STARTUP_SECONDS.append(time.monotonic() - ref_proc.started)
  ref_rc = ref_proc.wait()
  lines = [f"uninterrupted run: exit code {ref_rc}, "
           f"{time.monotonic() - ref_proc.started:.0f} s"]
  survived = 0
  for i, (mode, target, delay) in enumerate(kill_schedule(kills, seed)):
    if mode == "startup":  # A fraction of launch-to-compiled as seen so far.
      delay *= min(STARTUP_SECONDS)
    done = sorted(int(n) for n in checkpoint_names(resumed) if n.isdigit())
    before = done[-1] if done else 0
    proc = Proc.start(command(resumed), root / f"killed_{i}.log")
    what = kill_at(proc, resumed, mode, target, delay)
    complete = sorted(int(n) for n in checkpoint_names(resumed) if n.isdigit())
    killed = what != "finished before the signal"
    survived += killed
    lines.append(f"kill {i + 1:2d}: SIGKILL ({mode}, {delay:.2f} s{f', step >= {target}' if target else ''})"
                 f" hit {what}; resumed from {before}, latest complete checkpoint now "
                 f"{complete[-1] if complete else 'none'}")
  # SIGTERM: the run must save the step it is at, exit 143, and resume from exactly there.
  proc = Proc.start(command(resumed), root / "sigterm.log")
  what = kill_at(proc, resumed, "training", min(newest_step(resumed) + 12, TOTAL_STEPS - 6), 0.1,
                 sig=signal.SIGTERM)
  saved = re.search(r"SIGTERM: saved step (\d+)", proc.output())
  complete = sorted(int(n) for n in checkpoint_names(resumed) if n.isdigit())
  sigterm_ok = (proc.popen.returncode == 143 and saved is not None
                and complete and complete[-1] == int(saved.group(1)))
  lines.append(f"SIGTERM during {what}: exit code {proc.popen.returncode}, "
               f"{'saved step ' + saved.group(1) if saved else 'no save logged'}, latest "
               f"complete checkpoint {complete[-1] if complete else 'none'}")
  final = Proc.start(command(resumed), root / "final.log")
  final_rc = final.wait()
  resumed_from = re.search(r"Resumed from step (\d+)", final.output())
  lines.append(f"final run: exit code {final_rc}, resumed from step "
               f"{resumed_from.group(1) if resumed_from else 'none'}")
  if final_rc or ref_rc:
    for proc_log in (final.log, ref_proc.log):
      lines.append(f"--- tail of {proc_log.name}:\n" + proc_log.read_text()[-3000:])
    return False, lines + [f"kills survived: {survived}/{kills}, final params identical: no"], \
        reference
  state, step = restore_final(resumed)
  ref_state, ref_step = restore_final(reference)
  same = identical(state, ref_state) and step == ref_step == TOTAL_STEPS
  same_params = identical(state.params, ref_state.params)
  resume_ok = bool(resumed_from) and sigterm_ok and int(resumed_from.group(1)) == int(
      saved.group(1))
  lines.append(f"SIGTERM saves and resumes exactly: {'yes' if resume_ok else 'NO'}")
  lines.append(f"kills survived: {survived}/{kills}, final params identical: "
               f"{'yes' if same and same_params else 'no'}")
  return same and same_params and survived == kills and resume_ok, lines, reference


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", help="Scratch folder (default: a new temporary one).")
  parser.add_argument("--keep", action="store_true", help="Keep the scratch folder.")
  parser.add_argument("--cases-only", metavar="REFERENCE",
                      help="Skip the kills; run the bad-input cases against REFERENCE, the "
                      "workdir of a finished run of the tiny config.")
  args = parser.parse_args()
  logging.getLogger("absl").setLevel(logging.ERROR)
  root = Path(args.workdir or tempfile.mkdtemp(prefix="rnn_jax_faults_")).resolve()
  root.mkdir(parents=True, exist_ok=True)
  CACHE.update(JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  jax.config.update("jax_compilation_cache_dir", CACHE["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  start = time.perf_counter()
  try:
    if args.cases_only:
      kills_ok, lines, reference = True, [], Path(args.cases_only).resolve()
    else:
      kills_ok, lines, reference = run_kills(root, args.kills, args.seed)
    print("\n".join(lines), flush=True)
    kill_seconds = time.perf_counter() - start
    rows, cases_ok = run_cases(Context(scratch=root / "cases", reference=reference))
    print("\n| bad input | handled | what it produced |\n|---|---|---|")
    for name, passed, outcome in rows:
      print(f"| {name} | {'yes' if passed else 'NO'} | {outcome} |")
    print(f"\nkills: {kill_seconds:.0f} s; bad inputs: {time.perf_counter() - start - kill_seconds:.0f} s;"
          f" total {time.perf_counter() - start:.0f} s. Logs and workdirs: "
          f"{root if args.keep else '(removed; --keep keeps them)'}")
    return 0 if kills_ok and cases_ok else 1
  finally:
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
