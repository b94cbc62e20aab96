"""The command line: each mistake in a config file or an override is one line on stderr
(what, where, the fix) and exit status 2, and nothing is written to the workdir."""

import glob
import os
import platform
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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc tunables only")
@pytest.mark.parametrize("preset", [None, "", "glibc.malloc.mmap_max=0"],
                         ids=["unset", "empty", "user_value"])
def test_restart_happens_once_with_the_malloc_tunables_unless_the_user_set_them(
    tmp_path, preset):
  """`restart_with_malloc_tunables`, as a command calls it first: the command runs again,
  once, with MALLOC_TUNABLES in its environment and its arguments; any GLIBC_TUNABLES the
  user set, even an empty one, is kept and nothing restarts."""
  script = tmp_path / "command.py"
  script.write_text(
      "import os, sys\n"
      f"sys.path.insert(0, {REPO!r})\n"
      "print('start', flush=True)\n"
      "from rnn_jax import cli\n"
      "cli.restart_with_malloc_tunables()\n"
      "print('tunables', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])\n")
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if preset is not None:
    env["GLIBC_TUNABLES"] = preset
  result = subprocess.run([sys.executable, str(script), "--flag=1"], capture_output=True,
                          text=True, env=env, timeout=60)
  assert result.returncode == 0, result.stderr
  from rnn_jax import cli
  if preset is None:
    assert result.stdout.splitlines() == [
        "start", "start", f"tunables {cli.MALLOC_TUNABLES} ['--flag=1']"]
  else:
    assert result.stdout.splitlines() == ["start", f"tunables {preset} ['--flag=1']"]


def test_every_malloc_tunable_is_one_this_glibc_knows():
  """glibc ignores a tunable it does not know, so a misspelt name would do nothing silently:
  each name in MALLOC_TUNABLES must be in the dynamic loader's own list."""
  loaders = sorted(glob.glob("/lib64/ld-linux-*.so.*") + glob.glob("/lib/ld-linux-*.so.*"))
  listing = (subprocess.run([loaders[0], "--list-tunables"], capture_output=True, text=True)
             if loaders else None)
  if not listing or listing.returncode != 0:
    pytest.skip("no glibc loader that lists its tunables (glibc >= 2.33) on this machine")
  from rnn_jax import cli
  known = {line.split(":")[0].strip() for line in listing.stdout.splitlines()}
  for item in cli.MALLOC_TUNABLES.split(":"):
    assert item.split("=")[0] in known, (item, sorted(known))
