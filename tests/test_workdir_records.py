"""What a workdir records: the config travels inside each checkpoint, a rerun never rewrites
the record of a run it does not continue, and a workdir where nothing was trained can start
again with a corrected config."""

import json

import numpy as np
import pytest

from rnn_jax import engine, train

from test_train import latest_params, run, tiny_config

pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


def test_a_rerun_with_another_learning_rate_is_refused_and_rewrites_nothing(tmp_path):
  run(tiny_config(num_epochs=1), tmp_path)
  records = {name: (tmp_path / name).read_text() for name in ("config.json", "summary.json")}
  with pytest.raises(ValueError, match=r"learning_rate: 0.001 -> 0.5"):
    run(tiny_config(num_epochs=1, learning_rate=0.5), tmp_path)
  for name, text in records.items():
    assert (tmp_path / name).read_text() == text, name


def test_the_checkpoint_carries_its_config_when_config_json_is_gone(tmp_path):
  run(tiny_config(num_epochs=1), tmp_path)
  (tmp_path / "config.json").unlink()
  with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
    run(tiny_config(num_epochs=1, seed=1), tmp_path)
  assert engine.recorded_config(str(tmp_path))["seed"] == 0


def test_a_failed_first_start_does_not_lock_the_workdir(tmp_path, monkeypatch):
  def out_of_memory(self, state, batch):
    raise MemoryError("simulated: the model does not fit")
  monkeypatch.setattr(train.Runner, "compile", out_of_memory)
  with pytest.raises(MemoryError):
    run(tiny_config(num_epochs=1, hidden_size=64), tmp_path)
  monkeypatch.undo()
  summary = run(tiny_config(num_epochs=1, hidden_size=8), tmp_path)  # The corrected command.
  assert summary["steps"] > 0
  assert json.loads((tmp_path / "config.json").read_text())["hidden_size"] == 8
  state, _ = latest_params(tmp_path, tiny_config(num_epochs=1, hidden_size=8))
  assert np.shape(state.params["head"]["w"]) == (8, 10)


def test_a_second_run_on_a_busy_workdir_is_refused_and_a_dead_holder_is_not_in_the_way(
    tmp_path):
  """A real second process holds the workdir: the run is refused, naming it; once that
  process is SIGKILLed (its LOCK file left behind) the same run starts."""
  import os
  import signal
  import subprocess
  import sys
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\n"
       "from rnn_jax import workdir\n"
       "with workdir.lock(sys.argv[1]):\n"
       "  print('locked', flush=True)\n"
       "  time.sleep(120)\n", str(tmp_path)],
      stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {holder.pid} on "):
      run(tiny_config(num_epochs=1), tmp_path)
    assert not (tmp_path / "checkpoints").exists()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert (tmp_path / "LOCK").exists()  # Left behind by the killed process.
  assert run(tiny_config(num_epochs=1), tmp_path)["steps"] > 0


def test_a_changed_vocabulary_is_refused_on_resume(tmp_path):
  """The checkpoint stores the SHA-256 of the vocabulary it was trained with: a vocab.txt
  with two words swapped (every id after it re-mapped) is refused, naming the file."""
  config = dict(dataset="imdb_reviews", cell="gru", max_len=12, vocab_size=40, embed_size=4)
  run(tiny_config(num_epochs=1, **config), tmp_path)
  vocab = tmp_path / "data" / "vocab.txt"
  words = vocab.read_text().split("\n")
  words[5], words[6] = words[6], words[5]
  original = vocab.read_text()
  vocab.write_text("\n".join(words))
  with pytest.raises(ValueError, match=r"vocab.txt differs from the file the checkpoint"):
    run(tiny_config(num_epochs=2, **config), tmp_path)
  vocab.write_text(original)
  assert run(tiny_config(num_epochs=2, **config), tmp_path)["resumed_from_step"] > 0


def test_a_model_too_large_for_the_machine_says_the_memory_it_needs(tmp_path):
  with pytest.raises(ValueError, match=r"needs at least [\d.]+ GiB per device .*parameters.*"
                                       r"has [\d.]+ GiB\. Nothing was run\. Fix: lower"):
    run(tiny_config(num_epochs=1, hidden_size=200_000), tmp_path)
  assert not (tmp_path / "checkpoints").exists()
  assert run(tiny_config(num_epochs=1), tmp_path)["steps"] > 0  # The fixed command runs.
