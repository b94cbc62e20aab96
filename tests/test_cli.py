"""The command line: each mistake in a config file or an override is one line on stderr
(what, where, the fix) and exit status 2, and nothing is written to the workdir."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(tmp_path, *args, module=None):
  command = [sys.executable] + (["-m", module] if module else [os.path.join(REPO, "launch.py")])
  env = dict(os.environ, GLIBC_TUNABLES="")  # No re-exec: one process to watch.
  result = subprocess.run(command + list(args) + [f"--workdir={tmp_path / 'run'}"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  return result.returncode, lines


@pytest.mark.parametrize("make_args,expected", [
    (lambda d: ["--config=configs/mnist_lstm.py", "--config.hiden_size=4"],
     "--config.hiden_size names no config field 'hiden_size'. Did you mean 'hidden_size'?"),
    (lambda d: ["--config=configs/no_such_config.py"],
     "The config file configs/no_such_config.py does not exist. Fix: --config=configs/"),
    (lambda d: [f"--config={d / 'syntax.py'}"], "has a syntax error at line 2: "),
    (lambda d: [f"--config={d / 'no_get.py'}"], "defines no get_config()"),
    (lambda d: ["--config=configs/mnist_lstm.py", "--config.hidden_size=abc"],
     "--config.hidden_size=abc: invalid literal for int()"),
])
@pytest.mark.parametrize("module", [None, "rnn_jax.ablate"])
def test_config_mistakes_are_one_line(tmp_path, make_args, expected, module):
  (tmp_path / "syntax.py").write_text("def get_config():\n  return (\n")
  (tmp_path / "no_get.py").write_text("x = 1\n")
  args = make_args(tmp_path)
  if module:  # The sweep's command line: the same errors for its own config file.
    if "mnist_lstm" in args[0]:
      args = ["--config=configs/ablate_mnist_cells.py"] + [
          a.replace("--config.", "--config.base.") for a in args[1:]]
      expected = expected.replace("--config.", "--config.base.")
  code, lines = _launch(tmp_path, *args, module=module)
  assert code == 2, lines
  assert len(lines) == 1 and expected in lines[0], lines
  assert not (tmp_path / "run").exists()
