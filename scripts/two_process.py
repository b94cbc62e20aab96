"""Two JAX processes on this machine train the same model as one process.

    python scripts/two_process.py [--keep] [--workdir DIR]

Starts `launch.py` twice with JAX's multi-process environment (JAX_COORDINATOR_ADDRESS on
127.0.0.1 with a free port, JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=0/1; `distributed=True`,
`parallel='sharded'`), one CPU device each, cross-process collectives over Gloo. Each process
reads its half of every global batch of the adding problem; process 0 writes the workdir and
Orbax coordinates the checkpoints. The run stops after 2 epochs and is resumed to 3 by the same
two processes, so a multi-process restore is exercised too.

The same config then runs in one process with 2 CPU devices (the same mesh shape) and with one
device ('jit'). The final parameters, restored from each run's last checkpoint, must agree to
float32 rounding (np.allclose, rtol 1e-5, atol 1e-6); the largest difference is printed.
Exits 1 if they do not, or if any run fails.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# 40 steps per epoch of 8 examples (4 per process); a constant learning rate so that a run
# stopped after 2 epochs and resumed to 3 is the same as 3 epochs straight.
CONFIG = dict(dataset="adding", sequence_length=8, num_train_examples=320, validation_size=32,
              batch_size=8, eval_batch_size=2000, cell="gru", hidden_size=8, dropout_rate=0.1,
              learning_rate=0.01, num_epochs=3, checkpoint_every_steps=10, log_every_steps=10,
              progress_bar=False, plots=False, seed=0)
TIMEOUT = 400


def env_for(devices: int, **extra: str) -> dict[str, str]:
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
  if devices > 1:
    flags += f" --xla_force_host_platform_device_count={devices}"
  env.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
             TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **extra)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    if name not in extra:
      env.pop(name, None)
  return env


def command(workdir: Path, **overrides) -> list[str]:
  flags = [f"--config.{k}={v}" for k, v in {**CONFIG, **overrides}.items()]
  return [sys.executable, str(REPO / "launch.py"), f"--config={REPO / 'configs' / 'base.py'}",
          f"--workdir={workdir}", *flags]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
  with open(log, "w") as f:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(procs: list[subprocess.Popen], logs: list[Path]) -> list[int]:
  """Waits for all; on a timeout kills every one (a lone process would wait for its peer)."""
  deadline = time.monotonic() + TIMEOUT
  codes = []
  for proc in procs:
    try:
      codes.append(proc.wait(max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
      for other in procs:
        if other.poll() is None:
          os.killpg(other.pid, 9)
      codes.append(proc.wait())
  for code, log in zip(codes, logs):
    if code:
      print(f"--- {log.name} exited {code}; its last lines:\n{log.read_text()[-4000:]}")
  return codes


def run_two_processes(workdir: Path, root: Path, tag: str, **overrides) -> list[int]:
  port = free_port()
  procs, logs = [], []
  for pid in range(2):
    log = root / f"{tag}_process{pid}.log"
    env = env_for(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                  JAX_PROCESS_ID=str(pid))
    procs.append(start(command(workdir, parallel="sharded", distributed=True, **overrides),
                       env, log))
    logs.append(log)
  return finish(procs, logs)


def final_params(workdir: Path):
  """(params, step) of the newest checkpoint, restored on this process's one device."""
  sys.path.insert(0, str(REPO))
  from configs import base  # pylint: disable=g-import-not-at-top
  from rnn_jax import checkpoints, data, train  # pylint: disable=g-import-not-at-top
  logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notes on read-only managers.
  config = base.get_config()
  for key, value in CONFIG.items():
    config[key] = value
  task = data.load(config, None)
  model = train.build_model(config, task)
  tx, _ = train.build_optimizer(config, task.steps_per_epoch * config.num_epochs)
  target = train.create_train_state(model, tx, config.seed)
  with checkpoints.Checkpoints(workdir / "checkpoints", read_only=True) as ckpt:
    state, step = ckpt.restore_latest(target)
  return state.params, step


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", help="Scratch folder (default: a new temporary one).")
  parser.add_argument("--keep", action="store_true", help="Keep the scratch folder.")
  args = parser.parse_args()
  os.environ.update(env_for(1))  # This process: one CPU device, before JAX starts.
  root = Path(args.workdir or tempfile.mkdtemp(prefix="rnn_jax_2proc_")).resolve()
  root.mkdir(parents=True, exist_ok=True)
  start_time = time.perf_counter()
  try:
    two = root / "two_processes"
    codes = run_two_processes(two, root, "epochs12", num_epochs=2)
    resumed = []
    if not any(codes):
      codes = run_two_processes(two, root, "epoch3", num_epochs=3)
      resumed = [m.group(1) for pid in range(2) for m in re.finditer(
          r"Resumed from step (\d+)", (root / f"epoch3_process{pid}.log").read_text())]
    refs = {"1 process x 2 devices ('sharded')": (root / "one_process_2dev", 2, "sharded"),
            "1 process x 1 device ('jit')": (root / "one_process_1dev", 1, "jit")}
    procs, logs = [], []
    for name, (workdir, devices, mode) in refs.items():
      logs.append(root / f"{workdir.name}.log")
      procs.append(start(command(workdir, parallel=mode), env_for(devices), logs[-1]))
    codes += finish(procs, logs)
    if any(codes):
      print(f"a run failed (exit codes {codes})")
      return 1
    import numpy as np  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    two_params, two_step = final_params(two)
    process0 = (root / "epoch3_process0.log").read_text()
    print(f"2 processes (jax.distributed on 127.0.0.1, Gloo, 1 CPU device each): "
          f"{'2 devices' if 'sharded, 2 device(s)' in process0 else 'NOT 2 devices'}, "
          f"resumed from step(s) {resumed} after 2 epochs, final step {two_step}")
    ok = two_step == 120 and resumed == ["80", "80"] and "sharded, 2 device(s)" in process0
    for name, (workdir, _, _) in refs.items():
      params, step = final_params(workdir)
      diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                           two_params, params)
      close = all(jax.tree.leaves(jax.tree.map(
          lambda a, b: bool(np.allclose(a, b, rtol=1e-5, atol=1e-6)), two_params, params)))
      ok &= close and step == two_step
      print(f"max |param difference|, 2 processes vs {name}: "
            f"{max(jax.tree.leaves(diffs)):.3g} (allclose: {'yes' if close else 'NO'}, "
            f"step {step})")
    print(f"two-process check: {'passed' if ok else 'FAILED'} "
          f"({time.perf_counter() - start_time:.0f} s)")
    return 0 if ok else 1
  finally:
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
