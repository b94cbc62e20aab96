"""The LSTM profile's reading of compiled HLO (benchmarks/lstm_profile.py), checked against the
matmul FLOPs of an LSTM training step counted by hand from its equations, with XLA:CPU's dot
fusions on (XLA's default) and off (what `cli.setup_process` sets)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Counts, per class, the FLOPs of the dots that the loops of the compiled step execute, as the
# profile attributes them: executed instructions only (fused dots through their fusion).
_COUNT = """
import collections, json, sys
import jax, numpy as np
from benchmarks import common, lstm_profile
from rnn_jax import models
batch, steps, features, hidden = map(int, sys.argv[1:5])
model = models.SequenceModel(cell="lstm", input_kind="features", input_size=features,
                             hidden_size=hidden, num_outputs=3)
data = {"inputs": np.ones((batch, steps, features), np.float32),
        "labels": np.zeros((batch,), np.int32)}
runner, _, _ = common.jit_runner(model, data)
instructions = lstm_profile.parse_hlo(runner.compiled(data).as_text())
roles = lstm_profile.loop_instructions(instructions)
flops = collections.Counter()
fused = 0
for name, role in roles.items():
  if instructions[name][1] == "while":
    continue
  dots = lstm_profile.matmuls_of(instructions, name)
  fused += bool(dots) and instructions[name][1] != "dot"
  cls = lstm_profile.classify(instructions, name, role, features)
  flops[cls] += steps * sum(lstm_profile.dot_flops(instructions, d) for d in dots)
loops = sorted(r for n, r in roles.items() if instructions[n][1] == "while")
print(json.dumps({"flops": flops, "loops": loops, "fused": fused}))
"""


@pytest.mark.parametrize("dot_fusions", [True, False], ids=["xla_default", "setup_process"])
@pytest.mark.parametrize("batch,steps,features,hidden", [(4, 5, 3, 8), (6, 7, 5, 4)])
def test_profile_classes_count_the_lstm_matmul_flops(batch, steps, features, hidden,
                                                     dot_fusions):
  flags = os.environ.get("XLA_FLAGS", "").replace(
      "--xla_cpu_experimental_ynn_fusion_type=", "").strip()
  if not dot_fusions:
    flags += " --xla_cpu_experimental_ynn_fusion_type="
  result = subprocess.run(
      [sys.executable, "-c", _COUNT, str(batch), str(steps), str(features), str(hidden)],
      cwd=ROOT, env={**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"},
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["loops"] == ["backward", "forward"], out
  from benchmarks import lstm_profile
  c = lstm_profile.CLASSES
  flops = {k: out["flops"].get(k, 0) for k in c}
  gates = 4 * hidden
  x_w = steps * 2 * batch * features * gates   # x_t W_x, forward
  h_w = steps * 2 * batch * hidden * gates     # h_t W_h, forward; dg W_h^T the same backward
  assert flops[c[0]] == x_w, flops
  assert flops[c[1]] == h_w, flops
  assert flops[c[2]] == h_w, flops
  assert flops[c[3]] == 0, flops               # The inputs need no gradient.
  # dW_x and dW_h, accumulated at every step (the first step's h is the zero initial carry;
  # XLA still multiplies it).
  assert flops[c[4]] == x_w + h_w, flops
  assert sum(flops.values()) == 2 * x_w + 3 * h_w, flops  # No matmul counted elsewhere.


@pytest.mark.parametrize("cell", ["lstm", "gru", "mingru", "minlstm", "rglru", "lru"])
def test_linear_scan_benchmark_counts_the_matmul_flops_xla_runs(cell):
  """benchmarks/linear_scan.py's hand rule (`matmul_flops`) against the dots of the compiled
  training step: those in the loops once per time step, the others once. Input width differs
  from hidden, so a weight counted on the wrong side or with a needless input gradient shows."""
  import re
  import numpy as np
  from benchmarks import common, linear_scan, lstm_profile
  from rnn_jax import models
  batch, steps, features, hidden = 4, 5, 3, 8
  model = models.SequenceModel(cell=cell, input_size=features, hidden_size=hidden,
                               num_outputs=3,
                               scan_mode="sequential" if cell in linear_scan.LINEAR else "step")
  data = {"inputs": np.ones((batch, steps, features), np.float32),
          "labels": np.zeros((batch,), np.int32)}
  runner, state, _ = common.jit_runner(model, data)
  text = runner.compiled(data).as_text()
  instructions = lstm_profile.parse_hlo(text)
  entry = re.search(r"^ENTRY %?([\w.-]+)", text, re.M).group(1)
  in_loops = lstm_profile.loop_instructions(instructions)
  executed = 0.0
  for name, (computation, opcode, *_) in instructions.items():
    if opcode == "while":
      continue
    times = steps if name in in_loops else int(computation == entry)
    executed += times * sum(lstm_profile.dot_flops(instructions, d)
                            for d in lstm_profile.matmuls_of(instructions, name))
  assert linear_scan.matmul_flops(cell, state.params, batch, steps) == executed
