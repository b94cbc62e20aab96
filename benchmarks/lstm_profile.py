"""Where an rnn_jax LSTM training step spends its time, by op class, beside PyTorch's.

  python -m benchmarks.lstm_profile [--shape mnist_lstm] [--rounds 9] [--steps 20] [--out F]
                                    [--compute-dtype bfloat16]

Three measurements in one run, so the numbers can be compared with each other:
1. The step time of rnn_jax and PyTorch, one process per framework, rounds interleaved
   (`benchmarks.speed.bench_shape`), and their ratio.
2. A profile of the rnn_jax step (`jax.profiler.trace`): XLA:CPU records one event per executed
   HLO instruction (thunk). Each is classed from the compiled HLO: which loop it runs in (the
   forward scan, the backward scan, or neither) and, for matmuls, what it computes (the input
   projection x W_x, the recurrent h W_h, its input gradient dg W_h^T, the weight gradients
   h^T dg that autodiff accumulates at every step). Time no instruction accounts for is the
   loops' own cost: thunk dispatch, loop conditions, waiting. Every matmul class is set against
   its FLOPs and against the matmul rate of the same shapes called alone, and of a 1024^3
   matmul, both measured in the same run.
3. PyTorch's step, by aten op (`torch.profiler`), to show what its oneDNN LSTM does in one call.

Run it on a quiet machine: PyTorch's threads spin-wait and slow down many-fold when another
process shares the cores.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import speed

# Classes of the profile, in the order of the table.
CLASSES = (
    "input projection x W_x (forward)",
    "recurrent matmul h W_h (forward)",
    "recurrent input gradient dg W_h^T (backward)",
    "input gradient dg W_x^T (backward)",
    "weight gradients h^T dg, x^T dg (backward, every step)",
    "elementwise in the loops (gates, state update, their derivatives)",
    "data movement in the loops (slices, stacking residuals, copies)",
    "outside the loops (head, loss, Adam, transposes)",
    "loop overhead (dispatch, loop conditions, waiting)",
)
_MOVEMENT = re.compile(r"dynamic-slice|dynamic-update-slice|^copy|^bitcast$|^slice|concatenate|"
                       r"transpose|^tuple|get-tuple-element|broadcast$")


# ----------------------------------------------------------------------------- the HLO

def parse_hlo(text: str) -> dict:
  """{instruction name: (computation, opcode, result dims, operand names, attributes)}."""
  instructions, computation = {}, None
  for line in text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.-]+) \(.*\{$", line)
    if header:
      computation = header.group(1)
      continue
    match = re.match(r"^\s*(?:ROOT )?%?([\w.-]+) = (\w+)\[([\d,]*)\][^ ]* (\w[\w-]*)\((.*?)\)(.*)$",
                     line)
    if match and computation:
      name, _, dims, opcode, operands, attributes = match.groups()
      instructions[name] = (computation, opcode,
                            tuple(int(d) for d in dims.split(",") if d),
                            re.findall(r"%([\w.-]+)", operands), attributes)
    else:  # Tuple-shaped results (while loops): the computation they call.
      match = re.match(r"^\s*(?:ROOT )?%?([\w.-]+) = \(.*\) (\w[\w-]*)\(.*\), (.*)$", line)
      if match and computation:
        instructions[match.group(1)] = (computation, match.group(2), (), [], match.group(3))
  return instructions


def loop_bodies(instructions: dict) -> dict:
  """{while instruction name: set of the computations its body runs (nested calls included)}."""
  calls = collections.defaultdict(set)
  for computation, _, _, _, attributes in instructions.values():
    for called in re.findall(r"(?:body|condition|calls|to_apply)=%?([\w.-]+)", attributes):
      calls[computation].add(called)
  loops = {}
  for name, (_, opcode, _, _, attributes) in instructions.items():
    if opcode != "while":
      continue
    body = re.search(r"body=%?([\w.-]+)", attributes).group(1)
    reached, frontier = {body}, [body]
    while frontier:
      for called in calls[frontier.pop()]:
        if called not in reached:
          reached.add(called)
          frontier.append(called)
    loops[name] = reached
  return loops


def _contracts_batch(attributes: str) -> bool:
  """A dot contracting dimension 0 of both operands: h^T dg, a weight gradient."""
  return "lhs_contracting_dims={0}" in attributes and "rhs_contracting_dims={0}" in attributes


def loop_roles(instructions: dict, loops: dict) -> dict:
  """{computation: "forward" | "backward"} for every computation run inside a loop.

  The backward scan is the loop that accumulates weight gradients (dots contracting the batch);
  the forward scan has none.
  """
  roles = {}
  for computations in loops.values():
    backward = any(opcode == "dot" and _contracts_batch(attributes)
                   for computation, opcode, _, _, attributes in instructions.values()
                   if computation in computations)
    for computation in computations:
      roles.setdefault(computation, "backward" if backward else "forward")
  return roles


def dot_flops(instructions: dict, name: str) -> float:
  _, _, result, operands, attributes = instructions[name]
  lhs = instructions.get(operands[0])
  contracting = [int(d) for d in re.search(r"lhs_contracting_dims=\{([\d,]*)\}",
                                           attributes).group(1).split(",") if d]
  k = 1
  for d in contracting:
    k *= lhs[2][d] if lhs else 0
  size = 1
  for d in result:
    size *= d
  return 2.0 * size * k


def classify(instructions: dict, name: str, loop: str | None, input_size: int) -> str:
  """The class of CLASSES that one executed instruction belongs to."""
  _, opcode, result, operands, attributes = instructions[name]
  if loop is None:
    return CLASSES[7]
  if opcode == "dot":
    if _contracts_batch(attributes):
      return CLASSES[4]
    lhs = instructions.get(operands[0])
    k = lhs[2][-1] if lhs and "lhs_contracting_dims={1}" in attributes else None
    if loop == "forward":
      return CLASSES[0] if k == input_size else CLASSES[1]
    return CLASSES[3] if result and result[-1] == input_size else CLASSES[2]
  if _MOVEMENT.search(name) or _MOVEMENT.search(opcode):
    return CLASSES[6]
  return CLASSES[5]


# ----------------------------------------------------------------------------- rnn_jax

def profile_rnn_jax(shape: str, steps: int, compute_dtype: str = "float32") -> dict:
  """Traces `steps` train steps; returns ms per step per class, FLOPs per class, step ms."""
  from rnn_jax import cli
  cli.setup_process()
  import jax
  from configs import base
  from rnn_jax import models, train
  cell, kind, length, size, embed, hidden, outputs, batch_size = speed.SHAPES[shape]
  model = models.SequenceModel(cell=cell, input_kind=kind, input_size=size, embed_size=embed,
                               hidden_size=hidden, num_outputs=outputs,
                               compute_dtype=compute_dtype)
  tx, schedule = train.build_optimizer(base.get_config(), 10_000)
  runner = train.Runner("jit", model, tx, schedule)
  state = runner.put_state(train.create_train_state(model, tx, 0))
  inputs, labels = speed.make_batch(shape)
  batch = {"inputs": jax.device_put(inputs), "labels": jax.device_put(labels)}
  runner.compile(state, batch)
  instructions = parse_hlo(runner._compiled[train._shapes(batch)].as_text())
  loops = loop_bodies(instructions)
  for _ in range(5):
    state, _ = runner.train(state, batch)
  jax.block_until_ready(state)

  times = []
  for _ in range(3):  # Untraced step time: what the trace itself adds.
    start = time.perf_counter()
    for _ in range(steps):
      state, _ = runner.train(state, batch)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - start) / steps)
  folder = tempfile.mkdtemp(prefix="lstm_profile_")
  try:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(steps):
        state, _ = runner.train(state, batch)
      jax.block_until_ready(state)
    path = glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)[0]
    events = [e for e in json.load(gzip.open(path))["traceEvents"] if e.get("ph") == "X"]
  finally:
    shutil.rmtree(folder, ignore_errors=True)

  computation_role = loop_roles(instructions, loops)

  per_class = collections.Counter()
  flops = collections.Counter()
  calls = collections.Counter()
  busy = []
  for e in events:
    name = e["name"]
    if name not in instructions or instructions[name][1] == "while":
      continue
    computation = instructions[name][0]
    loop = computation_role.get(computation)
    cls = classify(instructions, name, loop, embed if kind == "tokens" else size)
    per_class[cls] += e["dur"]
    calls[cls] += 1
    busy.append((e["ts"], e["ts"] + e["dur"]))
    if instructions[name][1] == "dot":
      flops[cls] += dot_flops(instructions, name)
  wall_us = max(end for _, end in busy) - min(start for start, _ in busy)
  covered, last = 0.0, float("-inf")  # Union of busy intervals (instructions may overlap).
  for start, end in sorted(busy):
    if end > last:
      covered += end - max(start, last)
      last = end
  scale = 1.0 / (1000.0 * steps)  # us over all steps -> ms per step
  # All classes are read off the traced timeline (tracing slows the step; the shares are what
  # carries over): the loop overhead is the traced time in which no instruction ran.
  ms = {c: per_class[c] * scale for c in CLASSES[:8]}
  ms[CLASSES[8]] = (wall_us - covered) * scale
  return {"ms": ms, "flops": {c: flops[c] / steps for c in CLASSES},
          "calls": {c: calls[c] / steps for c in CLASSES},
          "traced_step_ms": wall_us * scale, "step_ms": 1e3 * statistics.median(times),
          "overlap_ms": (sum(per_class[c] for c in CLASSES[:8]) - covered) * scale,
          "dot_rates": standalone_dot_rates(instructions, computation_role, jax),
          "peak_gflops": speed._jax_peak()()}


def standalone_dot_rates(instructions: dict, computation_role: dict, jax,
                         count: int = 28) -> dict:
  """GFLOP/s of each distinct matmul shape of the loops, outside any loop.

  `count` independent matmuls of the shape (distinct operands, so XLA cannot merge them) in one
  jitted call, best of 20 calls: what the same shapes reach without the loop around them.
  """
  import jax.numpy as jnp
  from jax import lax
  rates = {}
  for name, (computation, opcode, result, operands, attributes) in instructions.items():
    if opcode != "dot" or computation not in computation_role:
      continue
    lhs, rhs = instructions.get(operands[0]), instructions.get(operands[1])
    if not lhs or not rhs:
      continue
    dims = tuple(tuple(int(d) for d in re.search(rf"{side}_contracting_dims=\{{([\d,]*)\}}",
                                                 attributes).group(1).split(",") if d)
                 for side in ("lhs", "rhs"))
    key = (lhs[2], rhs[2], dims)
    if key in rates:
      continue
    keys = jax.random.split(jax.random.key(0), 2)
    a = jax.random.normal(keys[0], (count,) + lhs[2], jnp.float32)
    b = jax.random.normal(keys[1], (count,) + rhs[2], jnp.float32)
    dots = jax.jit(lambda a, b, dims=dims: [lax.dot_general(a[i], b[i], (dims, ((), ())))
                                            for i in range(count)])
    jax.block_until_ready(dots(a, b))
    best = float("inf")
    for _ in range(20):
      start = time.perf_counter()
      jax.block_until_ready(dots(a, b))
      best = min(best, time.perf_counter() - start)
    rates[key] = count * dot_flops(instructions, name) / best / 1e9
  return {f"{list(k[0])} x {list(k[1])}, contracting {list(k[2][0])}/{list(k[2][1])}": v
          for k, v in rates.items()}


# ----------------------------------------------------------------------------- PyTorch

def profile_torch(shape: str, steps: int) -> list[tuple[str, float, int]]:
  """PyTorch's step by aten op: (op, self CPU ms per step, calls per step), largest first."""
  from torch.profiler import ProfilerActivity, profile
  _, run, _, _ = speed._torch_worker(shape, {})
  run(5)
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    run(steps)
  rows = [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count // steps)
          for e in prof.key_averages()]
  return sorted(rows, key=lambda r: -r[1])


def _torch_profile_in_subprocess(shape: str, steps: int) -> list | None:
  if not speed.torch_available():
    return None
  out = subprocess.run(
      [sys.executable, "-m", "benchmarks.lstm_profile", "--torch-worker", "--shape", shape,
       "--steps", str(steps)], capture_output=True, text=True, env=dict(speed._ENV_AT_START),
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report

def report(shape: str, timing: dict, jax_profile: dict, torch_ops: list | None,
           compute_dtype: str = "float32") -> str:
  ms, flops = jax_profile["ms"], jax_profile["flops"]
  traced = jax_profile["traced_step_ms"]
  lines = [f"## {shape}: one training step, compute dtype {compute_dtype}", ""]
  if "torch" in timing:
    ratio = timing["torch"]["ms"] / timing["rnn_jax"]["ms"]
    lines += [f"Interleaved timing: rnn_jax {timing['rnn_jax']['ms']:.2f} ms, PyTorch "
              f"{timing['torch']['ms']:.2f} ms: rnn_jax at **{ratio:.2f}x** PyTorch's speed "
              "(> 1: faster).", ""]
  total_flops = sum(flops.values())
  lines += [f"Profile of the rnn_jax step: {traced:.2f} ms while traced ("
            f"{jax_profile['step_ms']:.2f} ms untraced, same process; the shares are what "
            f"carries over), {total_flops / 1e9:.3f} GFLOP of matmuls. The 1024^3 matmul ran "
            f"at {jax_profile['peak_gflops']:.0f} GFLOP/s in this run: at that rate the FLOPs "
            f"alone need {1e3 * total_flops / 1e9 / jax_profile['peak_gflops']:.2f} ms.", "",
            "| op class | ms/step (traced) | % of step | calls/step | GFLOP/step | GFLOP/s |",
            "|---|---|---|---|---|---|"]
  for cls in CLASSES:
    rate = (f"{flops[cls] / 1e9 / (ms[cls] / 1e3):.0f}" if flops[cls] and ms[cls] else "")
    gflop = f"{flops[cls] / 1e9:.3f}" if flops[cls] else ""
    calls = f"{jax_profile['calls'][cls]:.0f}" if cls != CLASSES[8] else ""
    lines.append(f"| {cls} | {ms[cls]:.2f} | {100 * ms[cls] / traced:.0f}% | {calls} | {gflop} "
                 f"| {rate} |")
  if jax_profile["overlap_ms"] > 0.01:
    lines += ["", f"Instructions overlapped (ran on two threads at once) for "
              f"{jax_profile['overlap_ms']:.2f} ms per step: the classes add up to more than "
              "the step by that much."]
  lines += ["", "The loops' matmul shapes outside a loop (28 independent ones per jitted call):",
            ""] + [f"- {k}: {v:.0f} GFLOP/s" for k, v in jax_profile["dot_rates"].items()]
  if torch_ops:
    lines += ["", "PyTorch's step by aten op (self CPU time, `torch.profiler`, top 8):", "",
              "| op | ms/step | calls/step |", "|---|---|---|"]
    lines += [f"| {op} | {t:.2f} | {n} |" for op, t, n in torch_ops[:8]]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", default="mnist_lstm", choices=sorted(speed.SHAPES))
  parser.add_argument("--rounds", type=int, default=9, help="Interleaved timing rounds.")
  parser.add_argument("--steps", type=int, default=20, help="Steps per round and per profile.")
  parser.add_argument("--out", help="Also write the Markdown report to this file.")
  parser.add_argument("--compute-dtype", default="float32",
                      help="rnn_jax's matmul dtype (e.g. bfloat16); other than float32 only the "
                      "rnn_jax profile runs (the PyTorch step is float32).")
  parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.torch_worker:
    print(json.dumps(profile_torch(args.shape, args.steps)))
    return
  timing, torch_ops = {}, None
  if args.compute_dtype == "float32":
    frameworks = ["rnn_jax"] + (["torch"] if speed.torch_available() else [])
    timing = speed.bench_shape(args.shape, frameworks, args.rounds, args.steps)
    torch_ops = _torch_profile_in_subprocess(args.shape, args.steps)
  profile = profile_rnn_jax(args.shape, args.steps, args.compute_dtype)
  text = report(args.shape, timing, profile, torch_ops, args.compute_dtype)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
