"""What the benchmarks share: a model's training step, jitted and compiled for one batch."""

from __future__ import annotations

from typing import Any


def jit_runner(model: Any, batch: dict, seed: int = 0, config: Any = None
               ) -> tuple[Any, Any, float]:
  """(runner, state, compile seconds): `rnn_jax.train.Runner("jit")` for `model` with the
  optimiser `config` describes (configs/base.py's by default: Adam, constant learning rate),
  its initial state from `seed` on the device, and its train step compiled for `batch`."""
  from configs import base
  from rnn_jax import train
  tx, schedule = train.build_optimizer(base.get_config() if config is None else config, 10_000)
  runner = train.Runner("jit", model, tx, schedule)
  state = runner.put_state(train.create_train_state(model, tx, seed))
  return runner, state, runner.compile(state, batch)
