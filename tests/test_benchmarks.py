"""The LSTM profile's reading of compiled HLO (benchmarks/lstm_profile.py), checked against the
matmul FLOPs of an LSTM training step counted by hand from its equations."""

from __future__ import annotations

import collections

import jax
import numpy as np
import pytest

from benchmarks import lstm_profile
from configs import base
from rnn_jax import models, train


@pytest.mark.parametrize("batch,steps,features,hidden", [(4, 5, 3, 8), (6, 7, 5, 4)])
def test_profile_classes_count_the_lstm_matmul_flops(batch, steps, features, hidden):
  model = models.SequenceModel(cell="lstm", input_kind="features", input_size=features,
                               hidden_size=hidden, num_outputs=3)
  tx, schedule = train.build_optimizer(base.get_config(), 100)
  runner = train.Runner("jit", model, tx, schedule)
  state = runner.put_state(train.create_train_state(model, tx, 0))
  batch_ = {"inputs": jax.device_put(np.ones((batch, steps, features), np.float32)),
            "labels": jax.device_put(np.zeros((batch,), np.int32))}
  runner.compile(state, batch_)
  instructions = lstm_profile.parse_hlo(runner._compiled[train._shapes(batch_)].as_text())
  loops = lstm_profile.loop_bodies(instructions)
  assert len(loops) == 2, f"expected a forward and a backward scan, found {sorted(loops)}"
  roles = lstm_profile.loop_roles(instructions, loops)
  assert sorted(set(roles.values())) == ["backward", "forward"]

  flops = collections.Counter()  # Per class, for one pass of each loop body, times T.
  for name, (computation, opcode, *_rest) in instructions.items():
    if opcode == "dot" and computation in roles:
      cls = lstm_profile.classify(instructions, name, roles[computation], features)
      flops[cls] += steps * lstm_profile.dot_flops(instructions, name)
  gates = 4 * hidden
  x_w = steps * 2 * batch * features * gates   # x_t W_x, forward
  h_w = steps * 2 * batch * hidden * gates     # h_t W_h, forward; dg W_h^T the same backward
  c = lstm_profile.CLASSES
  assert flops[c[0]] == x_w
  assert flops[c[1]] == h_w
  assert flops[c[2]] == h_w
  assert flops[c[3]] == 0                      # The inputs need no gradient.
  # dW_x and dW_h, accumulated at every step. (The first step's h is the zero initial carry;
  # XLA still multiplies it.)
  assert flops[c[4]] == x_w + h_w
