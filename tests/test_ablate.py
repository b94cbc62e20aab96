"""Ablation sweeps: vmapped seeds equal sequential runs, finished runs are skipped, tables and
plots are written, parameter budgets match."""

import json
import os

import jax
import numpy as np
import pytest

from configs import base as base_config
from rnn_jax import ablate, checkpoints, config as config_lib, data, train


def _sweep(axes=None, **overrides):
  sweep = ablate.defaults()
  base = sweep.base = base_config.get_config(runlocal=True)
  base.update(dataset="adding", eval_batch_size=32, hidden_size=6)
  base.dropout_rate = 0.1  # Each seed must keep its own dropout key.
  sweep.sweep = axes or {"cell": ["rnn", "gru"]}
  sweep.seeds = [0, 1]
  sweep.metrics = ("test_loss", "test_accuracy")
  sweep.diagnostics_examples = 16
  for key, value in overrides.items():
    sweep[key] = value
  return sweep


def _final_params(config, workdir):
  task = data.load(config, workdir)
  model = train.build_model(config, task)
  tx, _ = train.build_optimizer(config, 1)
  template = jax.eval_shape(lambda: train.create_train_state(model, tx, config.seed))
  with checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True) as ck:
    state, step = ck.restore_latest(template)
  return state.params, step


def test_sweep_vmapped_equals_sequential_skips_and_reports(tmp_path):
  sweep = _sweep()
  workdir = str(tmp_path / "sweep")
  rows = ablate.run_sweep(sweep, workdir)
  assert [r["setting"] for r in rows] == ["cell=rnn", "cell=gru"]
  assert all(r["seeds"] == 2 for r in rows)

  # The vmapped group computed what train_and_evaluate computes for each seed on its own.
  for seed in (1,):  # Seed 1: its own init, dropout key and data, none of them seed 0's.
    config = ablate.run_config(sweep.base, {"cell": "gru"}, seed)
    alone = str(tmp_path / f"alone_{seed}")
    summary = train.train_and_evaluate(config, alone)
    vmapped_dir = ablate.run_dir(workdir, "cell=gru", seed)
    want, want_step = _final_params(config, alone)
    got, got_step = _final_params(config, vmapped_dir)
    assert got_step == want_step == 8
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), got, want)
    with open(os.path.join(vmapped_dir, "summary.json")) as f:
      vm = json.load(f)
    assert vm["vmapped_seeds"] == 2
    np.testing.assert_allclose(vm["test_loss"], summary["test_loss"], rtol=1e-4)
  p0, _ = _final_params(ablate.run_config(sweep.base, {"cell": "gru"}, 0),
                        ablate.run_dir(workdir, "cell=gru", 0))
  p1, _ = _final_params(ablate.run_config(sweep.base, {"cell": "gru"}, 1),
                        ablate.run_dir(workdir, "cell=gru", 1))
  assert not np.allclose(p0["head"]["w"], p1["head"]["w"])

  for name in ("results.md", "results.csv", "plots/learning_curves.png", "plots/summary.png",
               "plots/grad_norm_through_time.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  table = open(os.path.join(workdir, "results.md")).read()
  assert "cell=gru" in table and "±" in table and "memory_horizon" in table
  with open(os.path.join(ablate.run_dir(workdir, "cell=rnn", 1), "diagnostics.json")) as f:
    assert len(json.load(f)["grad_norm_through_time"]) == 10

  # Re-running trains nothing: the summaries stay untouched.
  stamps = {d: os.path.getmtime(os.path.join(d, "summary.json"))
            for d in (ablate.run_dir(workdir, n, s) for n in ("cell=rnn", "cell=gru")
                      for s in (0, 1))}
  ablate.run_sweep(sweep, workdir)
  assert all(os.path.getmtime(os.path.join(d, "summary.json")) == t for d, t in stamps.items())

  # A run finished by an older version (diagnostics of h only, no "state" field) gets its
  # diagnostics recomputed from its last checkpoint, without training again.
  stale = ablate.run_dir(workdir, "cell=gru", 1)
  path = os.path.join(stale, "diagnostics.json")
  with open(path) as f:
    original = json.load(f)
  with open(path, "w") as f:
    json.dump({"grad_norm_through_time": [1.0] * 10, "memory_horizon": -1}, f)
  trained = os.path.getmtime(os.path.join(stale, "metrics.jsonl"))
  ablate.run_sweep(sweep, workdir)
  with open(path) as f:
    fresh = json.load(f)
  assert fresh["state"] == "carry" and fresh["memory_horizon"] == original["memory_horizon"]
  np.testing.assert_allclose(fresh["grad_norm_through_time"], original["grad_norm_through_time"],
                             rtol=1e-5)
  assert os.path.getmtime(os.path.join(stale, "metrics.jsonl")) == trained


def test_sequential_fallback_and_dotted_fields(tmp_path):
  axes = (("cell", ["lstm"]), ("cell_options.forget_bias", [0.0]), ("truncation", [4]))
  sweep = _sweep(axes, vmap_seeds=False, seeds=[3])
  rows = ablate.run_sweep(sweep, str(tmp_path))
  assert rows[0]["setting"] == "cell=lstm,cell_options.forget_bias=0.0,truncation=4"
  with open(os.path.join(str(tmp_path), rows[0]["setting"], "seed_3", "summary.json")) as f:
    summary = json.load(f)
  assert summary["config"]["cell_options"] == {"forget_bias": 0.0}
  assert summary["config"]["truncation"] == 4 and summary["memory_horizon"] <= 4


def test_match_hidden_size():
  config = config_lib.defaults()
  config.dataset = "adding"
  target = 5000
  counts = {}
  for cell in ("rnn", "lstm", "gru"):
    config.cell = cell
    config.hidden_size = ablate.match_hidden_size(config, target)
    counts[cell] = ablate.count_params(config)
    config.hidden_size += 1
    above = ablate.count_params(config)
    config.hidden_size -= 2
    below = ablate.count_params(config)
    assert abs(counts[cell] - target) <= min(abs(above - target), abs(below - target))
  assert max(counts.values()) / min(counts.values()) < 1.1


def test_unknown_sweep_field():
  with pytest.raises(ValueError, match="not a config field"):
    ablate.run_config(config_lib.defaults(), {"hiden_size": 3}, 0)


def test_lm_tbptt_sweep_on_a_small_stream(tmp_path, monkeypatch):
  from rnn_jax import lm
  rng = np.random.default_rng(0)
  # A stream with structure: after token a comes (a * 3) % 13 + 2, with some noise.
  def stream(n):
    out = [2]
    for _ in range(n - 1):
      out.append((out[-1] * 3) % 13 + 2 if rng.uniform() < 0.9 else int(rng.integers(2, 15)))
    return np.array(out, np.int32)
  streams = {"train": stream(2400), "validation": stream(300), "test": stream(300)}
  monkeypatch.setattr(lm, "build_streams", lambda config, workdir=None: (streams, None))
  sweep = ablate.defaults()
  base = lm.defaults()
  base.update(vocab_size=16, embed_size=8, hidden_size=16, batch_size=8, window=5,
              eval_window=10, num_epochs=1, log_every_steps=20, learning_rate=1e-2, cell="gru")
  sweep.base = base
  sweep.sweep = {"window": [5, 2]}
  sweep.seeds = [0]
  sweep.metrics = ("test_perplexity", "test_loss")
  sweep.curve_metric = "validation_perplexity"
  rows = ablate.run_sweep(sweep, str(tmp_path))
  assert [r["setting"] for r in rows] == ["window=5", "window=2"]
  for row in rows:
    assert 1.0 < row["test_perplexity"] < 8.0  # Far below the 16-token uniform guess.
  with open(os.path.join(str(tmp_path), "window=2", "seed_0", "summary.json")) as f:
    assert json.load(f)["steps"] == (2400 // 8 - 1) // 2


def test_lm_max_tokens_is_a_budget_of_training_tokens(tmp_path):
  from rnn_jax import lm
  streams = {k: np.arange(n, dtype=np.int32) % 14 + 2
             for k, n in (("train", 2400), ("validation", 300), ("test", 300))}
  config = lm.defaults()
  config.update(vocab_size=16, embed_size=4, hidden_size=4, batch_size=8, window=5,
                eval_window=10, num_epochs=3, log_every_steps=1000, cell="rnn",
                max_tokens=8 * 5 * 7 + 3)  # Seven whole updates of 8 x 5 tokens, then stop.
  summary = lm.train_lm(config, str(tmp_path), streams=streams)
  assert summary["steps"] == 7


@pytest.mark.parametrize("field,value", [("window", 0), ("eval_window", -1),
                                         ("max_tokens", -5), ("max_steps", -1),
                                         ("window", True)])
def test_lm_validate_rejects_bad_lm_fields(field, value):
  from rnn_jax import lm
  config = lm.defaults()
  config[field] = value
  with pytest.raises(ValueError, match=f"config.{field}="):
    lm.validate(config)


def test_a_sweep_rerun_with_a_changed_base_is_refused_or_retrained_on_request(tmp_path):
  """The finished runs were trained with hidden 6: a rerun with hidden 8 must not print the
  hidden-6 table again. It is refused, naming the field; on request the old runs are moved
  aside (kept) and trained again."""
  workdir = str(tmp_path / "sweep")
  sweep = _sweep({"cell": ["gru"]}, seeds=[0])
  ablate.run_sweep(sweep, workdir)
  changed = _sweep({"cell": ["gru"]}, seeds=[0])
  changed.base.hidden_size = 8
  with pytest.raises(ValueError, match=r"hidden_size: 6 -> 8.*--config.on_mismatch=retrain"):
    ablate.run_sweep(changed, workdir)
  changed.on_mismatch = "retrain"
  rows = ablate.run_sweep(changed, workdir)
  run = ablate.run_dir(workdir, "cell=gru", 0)
  with open(os.path.join(run, "summary.json")) as f:
    assert json.load(f)["config"]["hidden_size"] == 8
  assert rows[0]["num_params"] == ablate.count_params(
      ablate.run_config(changed.base, {"cell": "gru"}, 0))
  moved = [d for d in os.listdir(os.path.dirname(run)) if d.startswith("seed_0.replaced-")]
  assert len(moved) == 1
  with open(os.path.join(os.path.dirname(run), moved[0], "summary.json")) as f:
    assert json.load(f)["config"]["hidden_size"] == 6


def test_a_finished_sweep_extended_with_a_larger_budget_trains_on(tmp_path):
  workdir = str(tmp_path / "sweep")
  ablate.run_sweep(_sweep({"cell": ["gru"]}, seeds=[0, 1]), workdir)
  longer = _sweep({"cell": ["gru"]}, seeds=[0, 1])
  longer.base.num_epochs = 3
  ablate.run_sweep(longer, workdir)
  for seed in (0, 1):
    with open(os.path.join(ablate.run_dir(workdir, "cell=gru", seed), "summary.json")) as f:
      summary = json.load(f)
    assert summary["steps"] == 12 and summary["resumed_from_step"] == 8
