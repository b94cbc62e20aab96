"""Speed of S seeds trained together under jax.vmap against S sequential runs.

  python -m benchmarks.vmap_seeds [--seeds=3] [--cell=lstm] [--steps=100] [--time=50]

Same model, batch shapes and number of steps on both sides (the adding problem, batch 50):
sequentially, one jitted `train.train_step` runs `steps` steps for each of S seeds; vmapped,
one jitted `jax.vmap(train.train_step)` runs `steps` steps on the S stacked states. Compile
time is reported apart and not counted in the step time.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np

from rnn_jax import cli, config as config_lib, train
from rnn_jax.data import synthetic


def main() -> None:
  cli.setup_process()
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--cell", default="lstm")
  parser.add_argument("--hidden", type=int, default=64)
  parser.add_argument("--time", type=int, default=50)
  parser.add_argument("--batch", type=int, default=50)
  parser.add_argument("--steps", type=int, default=100)
  args = parser.parse_args()

  config = config_lib.defaults()
  config.update(dataset="adding", cell=args.cell, hidden_size=args.hidden,
                sequence_length=args.time, batch_size=args.batch)
  task_like = type("T", (), {"num_classes": 0, "input_kind": "features", "input_size": 2})
  model = train.build_model(config, task_like)
  tx, schedule = train.build_optimizer(config, args.steps)
  step = functools.partial(train.train_step, model=model, tx=tx, schedule=schedule)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(args.steps):
    inputs, labels = synthetic.adding_problem(args.batch, args.time, rng)
    batches.append({"inputs": inputs, "labels": labels})
  states = [train.create_train_state(model, tx, s) for s in range(args.seeds)]

  # Sequential: one compiled step, S runs one after the other.
  single = jax.jit(step)
  start = time.perf_counter()
  compiled = single.lower(states[0], batches[0]).compile()
  compile_single = time.perf_counter() - start
  start = time.perf_counter()
  for state in states:
    for batch in batches:
      state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
  sequential = time.perf_counter() - start

  # Vmapped: one compiled program, the S states advance together on stacked batches.
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *states)
  stacked_batches = [jax.tree.map(lambda x: np.stack([x] * args.seeds), b) for b in batches]
  vmapped_step = jax.jit(jax.vmap(step))
  start = time.perf_counter()
  compiled_v = vmapped_step.lower(stacked, stacked_batches[0]).compile()
  compile_vmapped = time.perf_counter() - start
  start = time.perf_counter()
  state = stacked
  for batch in stacked_batches:
    state, metrics = compiled_v(state, batch)
  jax.block_until_ready(state)
  vmapped = time.perf_counter() - start

  print(f"{args.seeds} seeds x {args.steps} steps, {args.cell} {args.hidden} units, "
        f"T={args.time}, batch {args.batch}, {jax.devices()[0].platform} "
        f"({jax.device_count()} device(s))")
  print(f"  sequential: {sequential:.2f} s  ({args.seeds * args.steps / sequential:.1f} "
        f"seed-steps/s; compile {compile_single:.2f} s once)")
  print(f"  vmapped:    {vmapped:.2f} s  ({args.seeds * args.steps / vmapped:.1f} "
        f"seed-steps/s; compile {compile_vmapped:.2f} s)")
  print(f"  speedup:    {sequential / vmapped:.2f}x")
  del metrics


if __name__ == "__main__":
  main()
