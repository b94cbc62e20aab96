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
   h^T dg that autodiff accumulates at every step; dots XLA fused with their neighbours
   count as matmuls). Idle time within a loop's span is the loop's own cost (per-iteration
   dispatch, loop conditions); idle time elsewhere lies between the loops and the steps.
   Every matmul class is set against
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

from benchmarks import common, speed

# Classes of the profile, in the order of the table.
CLASSES = (
    "input projection x W_x (forward)",
    "recurrent matmul h W_h (forward)",
    "recurrent input gradient dg W_h^T (backward)",
    "input gradient dg W_x^T (backward)",
    "weight gradients h^T dg, x^T dg (backward, every step)",
    "elementwise in the loops (gates, state update, their derivatives)",
    "data movement in the loops (slices, stacking residuals, copies, casts)",
    "outside the loops (head, loss, Adam, transposes)",
    "loop overhead (per-iteration dispatch and loop conditions)",
    "between the loops and steps (dispatch, waiting)",
)
# Instructions that only move or reinterpret data; a fusion of nothing else is data movement.
MOVEMENT_OPS = {"bitcast", "broadcast", "concatenate", "constant", "convert", "copy",
                "dynamic-slice", "dynamic-update-slice", "get-tuple-element", "iota",
                "pad", "parameter", "reshape", "slice", "transpose", "tuple"}


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
    else:  # Tuple-shaped results (while loops, multi-output fusions).
      match = re.match(r"^\s*(?:ROOT )?%?([\w.-]+) = \(.*\) (\w[\w-]*)\(.*\), (.*)$", line)
      if match and computation:
        instructions[match.group(1)] = (computation, match.group(2), (), [], match.group(3))
  return instructions


def _by_computation(instructions: dict) -> dict:
  members = collections.defaultdict(list)
  for name, (computation, *_rest) in instructions.items():
    members[computation].append(name)
  return members


def _called(attributes: str, keys: str = "calls|to_apply") -> list[str]:
  return re.findall(rf"(?:{keys})=%?([\w.-]+)", attributes)


def fused_instructions(instructions: dict, name: str, members: dict | None = None) -> list[str]:
  """The instructions a fusion (or reduce, map, ...) runs inside it, nested calls included."""
  members = members or _by_computation(instructions)
  found, frontier = [], _called(instructions[name][4])
  seen = set(frontier)
  while frontier:
    for inner in members[frontier.pop()]:
      found.append(inner)
      for called in _called(instructions[inner][4]):
        if called not in seen:
          seen.add(called)
          frontier.append(called)
  return found


def matmuls_of(instructions: dict, name: str, members: dict | None = None) -> list[str]:
  """The dots an executed instruction runs: itself, or those fused into it (XLA:CPU may fuse a
  dot with its neighbours, e.g. YNNPACK fusions, unless `cli.setup_process` turned them off)."""
  if instructions[name][1] == "dot":
    return [name]
  return [inner for inner in fused_instructions(instructions, name, members)
          if instructions[inner][1] == "dot"]


def _contracts_batch(attributes: str) -> bool:
  """A dot contracting dimension 0 of both operands: h^T dg, a weight gradient."""
  return "lhs_contracting_dims={0}" in attributes and "rhs_contracting_dims={0}" in attributes


def loop_instructions(instructions: dict) -> dict:
  """{instruction name: "forward" | "backward"} for the instructions each loop executes
  (those of its body, not the ones fused inside them), plus {while name: role} for the loops.

  The backward scan is the loop that accumulates weight gradients (dots contracting the batch);
  the forward scan has none. Nested loops take the role of the loop around them.
  """
  members = _by_computation(instructions)
  roles = {}
  for name, (_, opcode, _, _, attributes) in instructions.items():
    if opcode != "while" or name in roles:
      continue
    executed, frontier = [], [re.search(r"body=%?([\w.-]+)", attributes).group(1)]
    while frontier:  # The body, and the bodies of loops nested in it.
      for inner in members[frontier.pop()]:
        executed.append(inner)
        if instructions[inner][1] == "while":
          frontier += _called(instructions[inner][4], "body")
    dots = [d for inner in executed for d in matmuls_of(instructions, inner, members)]
    role = ("backward" if any(_contracts_batch(instructions[d][4]) for d in dots)
            else "forward")
    roles.update({inner: role for inner in executed})
    roles[name] = role
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


def classify(instructions: dict, name: str, loop: str | None, input_size: int,
             members: dict | None = None) -> str:
  """The class of CLASSES that one executed instruction belongs to (loop: its loop's role)."""
  if loop is None:
    return CLASSES[7]
  dots = matmuls_of(instructions, name, members)
  if dots:
    _, _, result, operands, attributes = instructions[dots[0]]
    if _contracts_batch(attributes):
      return CLASSES[4]
    lhs = instructions.get(operands[0])
    k = lhs[2][-1] if lhs and "lhs_contracting_dims={1}" in attributes else None
    if loop == "forward":
      return CLASSES[0] if k == input_size else CLASSES[1]
    return CLASSES[3] if result and result[-1] == input_size else CLASSES[2]
  opcode = instructions[name][1]
  inner = fused_instructions(instructions, name, members) if opcode == "fusion" else [name]
  if all(instructions[i][1] in MOVEMENT_OPS for i in inner):
    return CLASSES[6]
  return CLASSES[5]


# ----------------------------------------------------------------------------- rnn_jax

def profile_rnn_jax(shape: str, steps: int, compute_dtype: str = "float32") -> dict:
  """Traces `steps` train steps; returns ms per step per class, FLOPs per class, step ms."""
  from rnn_jax import cli
  cli.setup_process()
  import jax
  from rnn_jax import models
  cell, kind, _, size, embed, hidden, outputs, _ = speed.SHAPES[shape]
  model = models.SequenceModel(cell=cell, input_kind=kind, input_size=size, embed_size=embed,
                               hidden_size=hidden, num_outputs=outputs,
                               compute_dtype=compute_dtype)
  inputs, labels = speed.make_batch(shape)
  batch = {"inputs": jax.device_put(inputs), "labels": jax.device_put(labels)}
  runner, state, _ = common.jit_runner(model, batch)
  instructions = parse_hlo(runner.compiled(batch).as_text())
  roles = loop_instructions(instructions)
  found = sorted(role for name, role in roles.items() if instructions[name][1] == "while")
  if found != ["backward", "forward"]:
    raise RuntimeError(f"Expected one forward and one backward loop in the compiled step, found "
                       f"{found}: the classes below would be wrong.")
  members = _by_computation(instructions)
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

  per_class, flops, calls = (collections.Counter() for _ in range(3))
  executed = []  # (start, end, region): region is the loop's role, or None outside the loops.
  for e in events:
    name = e["name"]
    if name not in instructions or instructions[name][1] == "while":
      continue  # Python and the runtime's own spans; a while event marks only its launch.
    cls = classify(instructions, name, roles.get(name), embed if kind == "tokens" else size,
                   members)
    per_class[cls] += e["dur"]
    calls[cls] += 1
    executed.append((e["ts"], e["ts"] + e["dur"], roles.get(name)))
    flops[cls] += sum(dot_flops(instructions, d)
                      for d in matmuls_of(instructions, name, members))
  executed.sort()
  # Each run of consecutive instructions of one loop is one execution of that loop (all its
  # iterations): its span minus its instructions' busy time is the loop's own overhead. The
  # rest of the idle time lies between the loops and between the steps.
  loop_us, inside, outside, run = 0.0, [], [], []
  for start, end, region in executed + [(float("inf"), float("inf"), "end")]:
    if run and region != run[-1][2]:
      if run[-1][2] is not None:
        loop_us += max(e for _, e, _ in run) - run[0][0]
      run = []
    run.append((start, end, region))
    if region != "end":
      (outside if region is None else inside).append((start, end))
  wall_us = max(e for _, e, _ in executed) - executed[0][0]
  scale = 1.0 / (1000.0 * steps)  # us over all steps -> ms per step
  # All classes are read off the traced timeline (tracing slows the step; the shares are what
  # carries over).
  ms = {c: per_class[c] * scale for c in CLASSES[:8]}
  ms[CLASSES[8]] = max(0.0, loop_us - _covered(inside)) * scale
  ms[CLASSES[9]] = max(0.0, wall_us - loop_us - _covered(outside)) * scale
  return {"ms": ms, "flops": {c: flops[c] / steps for c in CLASSES},
          "calls": {c: calls[c] / steps for c in CLASSES},
          "traced_step_ms": wall_us * scale, "step_ms": 1e3 * statistics.median(times),
          "overlap_ms": (sum(per_class.values()) - _covered(inside + outside)) * scale,
          "dot_rates": standalone_dot_rates(instructions, roles, members, jax),
          "peak_gflops": speed._jax_peak()()}


def _covered(intervals: list[tuple[float, float]]) -> float:
  """The length of the union of the intervals (instructions on two threads may overlap)."""
  covered, last = 0.0, float("-inf")
  for start, end in sorted(intervals):
    if end > last:
      covered += end - max(start, last)
      last = end
  return covered


def standalone_dot_rates(instructions: dict, roles: dict, members: dict, jax,
                         count: int = 28) -> dict:
  """GFLOP/s of each distinct matmul shape of the loops, outside any loop.

  `count` independent matmuls of the shape (distinct operands, so XLA cannot merge them) in one
  jitted call, best of 20 calls: what the same shapes reach without the loop around them.
  """
  import jax.numpy as jnp
  from jax import lax
  rates = {}
  for executed in roles:
    for name in matmuls_of(instructions, executed, members):
      _, _, _, operands, attributes = instructions[name]
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
    calls = f"{jax_profile['calls'][cls]:.0f}" if cls not in CLASSES[8:] else ""
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
