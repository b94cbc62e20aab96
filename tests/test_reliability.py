"""Reliability: bad inputs end to end through train_and_evaluate (fast), a real run killed
at random moments and resumed, and two processes training as one (slow, run by CI:
`python -m pytest -m slow tests/test_reliability.py`).

The cases live in tests/fault_injection.py (`python scripts/fault_injection.py` prints them
all as a table); here each runs on its own so a failure names the case.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fault_injection as faults
from rnn_jax import train

REPO = Path(__file__).resolve().parents[1]

NEEDS_REFERENCE = ("corrupt latest checkpoint", "truncated checkpoint file",
                   "incompatible resume")

# Orbax leaves un-awaited coroutines behind when a restore fails; that is its noise.
pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")]


SHORT = {"num_epochs": 1}  # 40 steps: enough for two checkpoints to fall back between.


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A finished run of the tiny config, shared by the cases that damage a copy of it."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  faults.train_quietly(faults.tiny_config(**SHORT), workdir)
  return workdir


@pytest.mark.parametrize("name", [n for n in faults.CASES if n in NEEDS_REFERENCE])
def test_bad_input_with_a_finished_run(name, reference, tmp_path):
  context = faults.Context(scratch=tmp_path, reference=reference, overrides=SHORT)
  outcome = faults.CASES[name](context)
  assert outcome


REVIEWS = ("empty review", "non-UTF-8 review", "over-long review")  # One run serves all three.


@pytest.mark.parametrize("name", [n for n in faults.CASES
                                  if n not in NEEDS_REFERENCE and n not in REVIEWS])
def test_bad_input(name, tmp_path):
  outcome = faults.CASES[name](faults.Context(scratch=tmp_path, reference=None))
  assert outcome


def test_bad_reviews_train_and_evaluate(tmp_path):
  context = faults.Context(scratch=tmp_path, reference=None)
  for name in REVIEWS:
    assert faults.CASES[name](context), name


def test_maybe_initialize_distributed_reads_the_process_count_and_id(monkeypatch):
  """JAX reads only JAX_COORDINATOR_ADDRESS; the count and id must be passed along, and the
  backend must not be started before initialize()."""
  calls = []
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  monkeypatch.setattr(train.jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(train.jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(train.jax, "default_backend",
                      lambda: pytest.fail("backend asked for before initialize()"))
  train.maybe_initialize_distributed(faults.tiny_config())
  assert calls == [{"num_processes": 2, "process_id": 1}]
  monkeypatch.setenv("JAX_PROCESS_ID", "one")
  with pytest.raises(ValueError, match="JAX_PROCESS_ID='one' is not an integer"):
    train.maybe_initialize_distributed(faults.tiny_config())


def _run_script(name, timeout):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # conftest's 4 fake devices are not for these processes.
  return subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py")], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_killed_and_resumed_runs_end_with_identical_parameters(tmp_path, monkeypatch):
  """launch.py SIGKILLed 10 times at random moments (start-up, training, checkpoint writes),
  then SIGTERMed, each time run again: the final state equals an uninterrupted run's bit for
  bit, and SIGTERM saves the step it is at and resumes from exactly there."""
  for key, value in dict(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
                         JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                         JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0").items():
    monkeypatch.setitem(faults.CACHE, key, value)  # The killed runs load what the first compiled.
  ok, lines, _ = faults.run_kills(tmp_path, kills=10, seed=0)
  report = "\n".join(lines)
  print(report)
  assert "kills survived: 10/10, final params identical: yes" in report, report
  assert "SIGTERM saves and resumes exactly: yes" in report, report
  assert ok, report


@pytest.mark.slow
def test_two_processes_train_like_one():
  proc = _run_script("two_process", timeout=900)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
  assert "two-process check: passed" in proc.stdout
