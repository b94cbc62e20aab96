"""The one training loop (rnn_jax/engine.py) and the layering around it: the language model
as a first-class task (the command line, exact resume mid-epoch, no field silently ignored), a
registered dataset's own checks, no process state changed on import, imports that point down.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import base
from rnn_jax import data, engine, lm, reporting, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lm_config(**overrides):
  config = lm.defaults()
  config.update({**dict(vocab_size=16, embed_size=4, hidden_size=4, batch_size=8, window=5,
                       eval_window=10, num_epochs=1, log_every_steps=5, cell="gru",
                       checkpoint_every_steps=7, progress_bar=False, plots=False),
                 **overrides})
  return config


def _streams():
  rng = np.random.default_rng(0)
  return {k: rng.integers(2, 16, n).astype(np.int32)
          for k, n in (("train", 2400), ("validation", 300), ("test", 300))}


def _final_state(workdir, config):
  model = lm.build_model(config)
  tx, _ = train.build_optimizer(config, 1)
  template = engine.checkpoint_tree(train.create_train_state(model, tx, config.seed),
                                    lm.zero_carries(model, config.batch_size))
  with engine.checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"),
                                      read_only=True) as ckpt:
    tree, step = ckpt.restore_latest(template)
  return jax.device_get(tree), step


def test_lm_resumed_mid_epoch_continues_exactly(tmp_path):
  """A run stopped inside an epoch (a budget of 23 of the epoch's 59 windows) and extended to
  the whole epoch ends with the parameters of a run that never stopped: the carries it had
  at step 23 come back from the checkpoint (zero carries there would change every update)."""
  streams = _streams()
  whole = _lm_config(max_steps=59)
  lm.train_lm(whole, str(tmp_path / "whole"), streams=streams)
  lm.train_lm(_lm_config(max_steps=23), str(tmp_path / "resumed"), streams=streams)
  summary = lm.train_lm(whole, str(tmp_path / "resumed"), streams=streams)
  assert summary["resumed_from_step"] == 23 and summary["steps"] == 59
  (a, step_a), (b, step_b) = (_final_state(str(tmp_path / d), whole)
                              for d in ("whole", "resumed"))
  assert step_a == step_b == 59
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # The resumed run's record says which field changed.
  resume, = reporting.read_metrics(str(tmp_path / "resumed"), "resume")
  assert resume["changed"] == {"max_steps": [23, 59]}


@pytest.mark.parametrize("field,value", [("bidirectional", True), ("truncation", 3),
                                         ("readout", "mean"), ("diagnostics_every_steps", 5),
                                         ("parallel", "pmap")])
def test_lm_refuses_a_shared_field_it_does_not_use(tmp_path, field, value):
  config = _lm_config(**{field: value})
  with pytest.raises(ValueError, match=f"config.{field}=.* is not used by the language model"):
    lm.train_lm(config, str(tmp_path / "run"), streams=_streams())
  assert not (tmp_path / "run").exists()


LM_CONFIG_FILE = '''
import numpy as np
from rnn_jax import lm

def _streams(config, workdir=None):  # A tiny corpus in place of the IMDB reviews.
  rng = np.random.default_rng(0)
  streams = {k: rng.integers(2, 16, n).astype(np.int32)
             for k, n in (("train", 2400), ("validation", 300), ("test", 300))}
  return streams, [str(i) for i in range(16)]

lm.build_streams = _streams

def get_config():
  config = lm.defaults()
  config.update(vocab_size=16, embed_size=4, hidden_size=4, batch_size=8, window=5,
                eval_window=10, num_epochs=1, max_steps=12, log_every_steps=5, cell="gru",
                progress_bar=False, plots=False)
  return config
'''


@pytest.mark.slow  # ~25 s; test_lm_resumed_mid_epoch_continues_exactly stays in the default run.
def test_launch_trains_resumes_and_guards_the_language_model(tmp_path):
  """`python launch.py --config=<an LM config>` trains the LM through the one loop: a summary,
  a rerun that resumes (nothing left to train), a changed field refused."""
  config_file = tmp_path / "tiny_lm.py"
  config_file.write_text(LM_CONFIG_FILE)
  workdir = tmp_path / "run"
  env = dict(os.environ, GLIBC_TUNABLES="", PYTHONPATH=REPO)
  env.pop("XLA_FLAGS", None)

  def launch(*overrides):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"),
                           f"--config={config_file}", f"--workdir={workdir}", *overrides],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)

  first = launch()
  assert first.returncode == 0, first.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["steps"] == 12 and summary["window"] == 5
  assert np.isfinite(summary["test_perplexity"]) and summary["test_perplexity"] > 1
  again = launch()
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((workdir / "summary.json").read_text())["resumed_from_step"] == 12
  changed = launch("--config.hidden_size=8")
  assert changed.returncode != 0
  assert "hidden_size: 4 -> 8" in changed.stderr


def test_a_registered_datasets_own_check_runs_before_anything_is_written(tmp_path):
  def check_config(config):
    if config.sequence_length > 10:
      raise ValueError("config.sequence_length must be <= 10 for strict_adding.")
  data.register("strict_adding", data.LOADERS["adding"], check_config=check_config,
                dims=data.DIMS["adding"])
  try:
    config = base.get_config()
    config.update(dataset="strict_adding", sequence_length=20, num_train_examples=64,
                  hidden_size=4, batch_size=16, progress_bar=False, plots=False)
    with pytest.raises(ValueError, match="must be <= 10 for strict_adding"):
      train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
  finally:
    for registry in (data.LOADERS, data.CONFIG_CHECKS, data.DIMS):
      registry.pop("strict_adding", None)


def test_importing_the_library_changes_no_process_state():
  code = textwrap.dedent("""
      import logging, os
      import rnn_jax, rnn_jax.ablate, rnn_jax.checkpoints, rnn_jax.engine, rnn_jax.lm
      import rnn_jax.train, rnn_jax.cli
      assert "XLA_FLAGS" not in os.environ, os.environ["XLA_FLAGS"]
      assert not logging.getLogger("absl").filters
      rnn_jax.cli.setup_process()  # What the entry points do.
      assert os.environ["XLA_FLAGS"] == rnn_jax.cli.XLA_CPU_FLAGS
      assert len(logging.getLogger("absl").filters) == 1
      print("ok")
  """)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


# Each module of rnn_jax and the modules it may import from (directly or in a function).
ALLOWED = {
    "config": set(), "cells": set(), "checkpoints": set(), "reporting": set(), "workdir": set(),
    "recurrent": {"cells"},
    "models": {"cells", "recurrent"},
    "interop": {"cells"},
    "data": {"config"},
    "diagnostics": {"cells", "models", "recurrent"},
    "engine": {"checkpoints", "config", "reporting", "workdir"},
    "train": {"cells", "config", "data", "diagnostics", "engine", "models", "recurrent"},
    "lm": {"cells", "config", "data", "engine", "models", "recurrent", "train"},
    "ablate": {"checkpoints", "config", "data", "diagnostics", "engine", "lm", "reporting",
               "train", "workdir"},
    "cli": {"lm", "train"},
}


def _rnn_jax_imports(path):
  """The rnn_jax modules (first component) a file imports, outside `if __name__ == ...`."""
  tree = ast.parse(open(path).read())
  mains = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
  skipped = {id(n) for m in mains for n in ast.walk(m)}
  found = set()
  for node in ast.walk(tree):
    if id(node) in skipped:
      continue
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rnn_jax"):
      parts = node.module.split(".")
      found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
    elif isinstance(node, ast.Import):
      found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("rnn_jax.")}
  return found


def test_imports_point_down_only():
  """The README's layering, read from the source: no module imports one above it (and so no
  cycle); config.py imports nothing from rnn_jax."""
  package = os.path.join(REPO, "rnn_jax")
  seen = set()
  for name in sorted(os.listdir(package)):
    path = os.path.join(package, name)
    module = name[:-3] if name.endswith(".py") else name
    if module == "__init__" or not (name.endswith(".py") or os.path.isdir(path)):
      continue
    files = ([path] if name.endswith(".py") else
             [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".py")])
    imports = set().union(*(_rnn_jax_imports(f) for f in files)) - {module}
    assert module in ALLOWED, f"rnn_jax/{name} is not in the layering; add it to ALLOWED"
    assert imports <= ALLOWED[module], (module, imports - ALLOWED[module])
    seen.add(module)
  assert seen == set(ALLOWED) - {"__pycache__"}


def test_an_lm_workdir_of_the_layout_without_carries_resumes(tmp_path):
  """Checkpoints written before the carries were saved next to the state (a budget end) still
  resume, with zero carries, instead of failing on the new layout."""
  streams, config = _streams(), _lm_config(max_steps=10)
  workdir = str(tmp_path / "old")
  model = lm.build_model(config)
  tx, _ = train.build_optimizer(config, 10)
  state = train.create_train_state(model, tx, config.seed).replace(step=np.int32(10))
  os.makedirs(workdir)
  engine.save_config(workdir, config)
  with engine.checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"),
                                      record=engine.run_record(config)) as ckpt:
    ckpt.save(10, jax.device_get(state), force=True)
  summary = lm.train_lm(_lm_config(max_steps=20), workdir, streams=streams)
  assert summary["resumed_from_step"] == 10 and summary["steps"] == 20


def test_batches_that_run_out_before_the_epoch_ends_are_an_error(tmp_path, monkeypatch):
  original = data.Task.train_batches
  monkeypatch.setattr(data.Task, "train_batches",
                      lambda self, epoch, start=0: iter(list(original(self, epoch, start))[:-1]))
  config = base.get_config(runlocal=True)
  config.update(dataset="adding")
  with pytest.raises(RuntimeError, match="ran out at step 3, before the epoch's last step 4"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_a_kill_right_after_an_epochs_last_checkpoint_keeps_that_epochs_record(
    tmp_path, monkeypatch):
  """The epoch's last step is checkpointed only after its evaluation, records and best
  checkpoint: a run killed just after that save resumes in the next epoch with nothing of
  the finished one missing (checkpoint_every_steps = the epoch's 4 steps makes the periodic
  save fall on that step too)."""
  config = base.get_config(runlocal=True)
  config.update(dataset="adding", checkpoint_every_steps=4)
  workdir = str(tmp_path / "run")
  save = engine.checkpoints.Checkpoints.save

  def save_then_die(self, step, state, **kwargs):
    written = save(self, step, state, **kwargs)
    if step == 4:
      raise SystemExit(137)  # As a SIGKILL right after the write.
    return written

  monkeypatch.setattr(engine.checkpoints.Checkpoints, "save", save_then_die)
  with pytest.raises(SystemExit):
    train.train_and_evaluate(config, workdir)
  monkeypatch.setattr(engine.checkpoints.Checkpoints, "save", save)
  summary = train.train_and_evaluate(config, workdir)
  assert summary["resumed_from_step"] == 4
  epochs = reporting.read_metrics(workdir, "epoch")
  assert [r["epoch"] for r in epochs] == [1, 2]
  assert all(r.get("validation_accuracy") is not None for r in epochs)
  with engine.checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"),
                                      read_only=True) as ckpt:
    assert 4 in ckpt.best_steps() or 8 in ckpt.best_steps()
    assert summary["best_validation_accuracy"] == max(r["validation_accuracy"] for r in epochs)


def test_a_sigterm_on_another_process_stops_this_one_at_the_same_step(tmp_path, monkeypatch):
  """Several processes agree on a SIGTERM at the logging steps, so all of them save the same
  step and exit together (here the other process is simulated: it got the signal)."""
  config = base.get_config(runlocal=True)
  config.update(dataset="adding", log_every_steps=3, checkpoint_every_steps=100)
  gathered = []

  def allgather(flag):
    gathered.append(bool(flag))
    return np.array([flag, True])  # This process, and a peer that got a SIGTERM.

  monkeypatch.setattr(engine, "_processes", lambda: 2)
  monkeypatch.setattr(engine.multihost_utils, "process_allgather", allgather)
  workdir = str(tmp_path / "run")
  with pytest.raises(SystemExit) as stopped:
    train.train_and_evaluate(config, workdir)
  assert stopped.value.code == 143 and gathered == [False]  # Asked at step 3 only.
  assert engine.checkpoints.latest_record(os.path.join(workdir, "checkpoints"))[0] == 3
  monkeypatch.setattr(engine, "_processes", lambda: 1)
  assert train.train_and_evaluate(config, workdir)["resumed_from_step"] == 3
