"""Training-step speed of rnn_jax against flax.linen and PyTorch on the same shapes.

  python -m benchmarks.speed [--quick] [--repeats N] [--out table.md] [--long] [--configs]

One training step = forward + backward + Adam update, float32, on a fixed random batch. Each
framework runs in its own subprocess (one framework per process: no shared thread pools or
allocators), all workers compile/warm up first, then the parent interleaves timing rounds
(rnn_jax, flax, torch, rnn_jax, ...) so that a change in machine load hits every framework
alike, and reports medians. The machine's attainable matmul rate is measured in the same run
(the best of `jnp.dot` and `torch.mm` on 1024^3) and each step is reported as a fraction of it,
counting the step's matmul FLOPs as 3x the forward pass's (forward, input gradient, weight
gradient).

Frameworks:
- rnn_jax: the real `rnn_jax.train.train_step` (through `train.Runner("jit")`) with
  `models.SequenceModel` and `train.build_optimizer` (Adam, constant learning rate).
- flax: `nn.RNN(nn.LSTMCell | nn.GRUCell | nn.SimpleCell)` + `nn.Dense` + `optax.adam`, jitted.
- torch (when installed): `nn.LSTM | nn.GRU | nn.RNN` + `nn.Linear` + `torch.optim.Adam`, 2 threads,
  `torch.set_flush_denormal(True)` (without it long sequences run on denormals).

`--long` adds rnn_jax alone on sequential MNIST (784 x 1 pixels, LSTM 128, batch 32): step time for
T = 98, 196, 392, 784 and XLA's temp memory with and without `remat`. `--configs` adds the
compile time of the training step of every config in configs/.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from benchmarks import common

# Workers start from the environment this process was started with, not with the XLA flags
# that the in-process measurements (`cli.setup_process`) add: only rnn_jax sets those.
_ENV_AT_START = dict(os.environ)

# name: (cell, input kind, time steps, input size or vocab, embed, hidden, outputs, batch)
SHAPES = {
    "mnist_lstm": ("lstm", "features", 28, 28, 0, 128, 10, 128),
    "mnist_gru": ("gru", "features", 28, 28, 0, 128, 10, 128),
    "mnist_rnn": ("rnn", "features", 28, 28, 0, 128, 10, 128),
    "imdb_lstm": ("lstm", "tokens", 80, 10000, 100, 64, 2, 128),
    "imdb_gru": ("gru", "tokens", 80, 10000, 100, 64, 2, 128),
}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
FRAMEWORKS = ("rnn_jax", "flax", "torch")
PEAK_N = 1024


def step_flops(shape: str) -> float:
  """Matmul FLOPs of one training step: 3x the forward pass (forward, dX, dW)."""
  cell, kind, steps, size, embed, hidden, outputs, batch = SHAPES[shape]
  features = embed if kind == "tokens" else size
  recurrent = steps * 2 * batch * (features + hidden) * GATES[cell] * hidden
  head = 2 * batch * hidden * outputs
  return 3.0 * (recurrent + head)


def make_batch(shape: str, seed: int = 0):
  import numpy as np
  cell, kind, steps, size, embed, hidden, outputs, batch = SHAPES[shape]
  rng = np.random.default_rng(seed)
  if kind == "tokens":
    inputs = rng.integers(1, size, (batch, steps)).astype(np.int32)
  else:
    inputs = rng.random((batch, steps, size), dtype=np.float32)
  return inputs, rng.integers(0, outputs, batch).astype(np.int32)


# ----------------------------------------------------------------------------- workers
# Each returns (compile_or_first_step_seconds, run(n) -> seconds for n steps, peak() -> GFLOP/s,
# extra dict).

def _jax_peak():
  import jax
  import jax.numpy as jnp
  a = jnp.ones((PEAK_N, PEAK_N), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()

  def peak():
    best = float("inf")
    for _ in range(5):
      start = time.perf_counter()
      dot(a, a).block_until_ready()
      best = min(best, time.perf_counter() - start)
    return 2 * PEAK_N ** 3 / best / 1e9
  return peak


def _rnn_jax_worker(shape: str, options: dict):
  from rnn_jax import cli
  cli.setup_process()  # The XLA flags of every rnn_jax entry point (before JAX starts).
  import jax
  from rnn_jax import models
  cell, kind, steps, size, embed, hidden, outputs, batch_size = SHAPES[shape]
  model = models.SequenceModel(cell=cell, input_kind=kind, input_size=size, embed_size=embed,
                               hidden_size=hidden, num_outputs=outputs, **options)
  inputs, labels = make_batch(shape)
  batch = {"inputs": jax.device_put(inputs), "labels": jax.device_put(labels)}
  runner, state, compile_s = common.jit_runner(model, batch)
  compiled = runner.compiled(batch)
  memory = compiled.memory_analysis()
  extra = {"temp_mib": memory.temp_size_in_bytes / 2 ** 20 if memory else None}
  holder = [state]

  def run(n):
    start = time.perf_counter()
    for _ in range(n):
      holder[0], metrics = runner.train(holder[0], batch)
    jax.block_until_ready(holder[0])
    return time.perf_counter() - start
  return compile_s, run, _jax_peak(), extra


def _flax_worker(shape: str, options: dict):
  import functools
  import flax.linen as nn
  import jax
  import optax
  cell, kind, steps, size, embed, hidden, outputs, batch_size = SHAPES[shape]
  cell_cls = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.SimpleCell}[cell]

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      if kind == "tokens":
        x = nn.Embed(size, embed)(x)
      carry, _ = nn.RNN(cell_cls(hidden), return_carry=True)(x)
      h = carry[1] if cell == "lstm" else carry  # LSTMCell's carry is (c, h).
      return nn.Dense(outputs)(h)

  model = Model()
  inputs, labels = make_batch(shape)
  inputs, labels = jax.device_put(inputs), jax.device_put(labels)
  params = model.init(jax.random.PRNGKey(0), inputs)
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  start = time.perf_counter()
  compiled = step.lower(params, opt_state, inputs, labels).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  extra = {"temp_mib": memory.temp_size_in_bytes / 2 ** 20 if memory else None}
  holder = [params, opt_state]

  def run(n):
    start = time.perf_counter()
    for _ in range(n):
      holder[0], holder[1], loss = compiled(holder[0], holder[1], inputs, labels)
    jax.block_until_ready(holder)
    return time.perf_counter() - start
  return compile_s, run, _jax_peak(), extra


def _torch_worker(shape: str, options: dict):
  import torch
  from torch import nn
  torch.set_num_threads(int(options.get("threads", 2)))
  torch.set_flush_denormal(True)
  torch.manual_seed(0)
  cell, kind, steps, size, embed, hidden, outputs, batch_size = SHAPES[shape]
  rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]

  class Model(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(size, embed) if kind == "tokens" else None
      self.rnn = rnn_cls(embed if kind == "tokens" else size, hidden, batch_first=True)
      self.head = nn.Linear(hidden, outputs)

    def forward(self, x):
      if self.embed is not None:
        x = self.embed(x)
      _, state = self.rnn(x)
      h = state[0] if cell == "lstm" else state
      return self.head(h[-1])

  model = Model()
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  inputs, labels = make_batch(shape)
  inputs = torch.from_numpy(inputs).long() if kind == "tokens" else torch.from_numpy(inputs)
  labels = torch.from_numpy(labels).long()
  loss_fn = nn.CrossEntropyLoss()

  def one():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(inputs), labels)
    loss.backward()
    opt.step()

  start = time.perf_counter()
  one()  # Eager: no compilation; the first step's time is reported instead.
  first_s = time.perf_counter() - start

  def run(n):
    start = time.perf_counter()
    for _ in range(n):
      one()
    return time.perf_counter() - start

  a = torch.ones(PEAK_N, PEAK_N)
  torch.mm(a, a)

  def peak():
    best = float("inf")
    for _ in range(5):
      start = time.perf_counter()
      torch.mm(a, a)
      best = min(best, time.perf_counter() - start)
    return 2 * PEAK_N ** 3 / best / 1e9
  return first_s, run, peak, {"temp_mib": None}


WORKERS = {"rnn_jax": _rnn_jax_worker, "flax": _flax_worker, "torch": _torch_worker}


def worker_main(framework: str, shape: str, options: dict) -> None:
  """Line protocol on stdin/stdout: 'run N' -> seconds; 'peak' -> GFLOP/s; 'quit'."""
  compile_s, run, peak, extra = WORKERS[framework](shape, options)
  run(3)  # Warm-up: allocator, caches, thread pools.
  extra["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps({"ready": True, "compile_s": compile_s, **extra}), flush=True)
  for line in sys.stdin:
    command = line.split()
    if not command or command[0] == "quit":
      break
    if command[0] == "run":
      print(json.dumps({"seconds": run(int(command[1]))}), flush=True)
    elif command[0] == "peak":
      print(json.dumps({"gflops": peak()}), flush=True)


class Worker:
  def __init__(self, framework: str, shape: str, options: dict, env: dict | None = None):
    self.framework = framework
    cmd = [sys.executable, "-m", "benchmarks.speed", "--worker", framework, "--shape", shape,
           "--options", json.dumps(options)]
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, env=env or dict(_ENV_AT_START),
                                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    self.info = self._read()

  def _read(self) -> dict:
    while True:
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError(f"{self.framework} worker exited (code {self.proc.wait()}).")
      if line.startswith("{"):
        return json.loads(line)

  def ask(self, command: str) -> dict:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    try:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass
    self.proc.wait(timeout=60)


def torch_available() -> bool:
  try:
    import importlib.util
    return importlib.util.find_spec("torch") is not None
  except Exception:
    return False


def bench_shape(shape: str, frameworks, rounds: int, steps: int) -> dict:
  """Starts one worker per framework, then interleaves `rounds` rounds of `steps` steps."""
  workers = {}
  try:
    for framework in frameworks:  # One at a time: compiling is not what the rounds time.
      workers[framework] = Worker(framework, shape, {})
    times = {f: [] for f in frameworks}
    peaks = {f: [] for f in frameworks}
    for r in range(rounds):
      order = frameworks if r % 2 == 0 else frameworks[::-1]
      for framework in order:
        times[framework].append(workers[framework].ask(f"run {steps}")["seconds"] / steps)
        time.sleep(0.05)  # Let OpenMP / Eigen spinning threads go idle before the next one.
      if r % max(1, rounds // 3) == 0:
        for framework in order:
          peaks[framework].append(workers[framework].ask("peak")["gflops"])
    return {f: {"ms": 1e3 * statistics.median(times[f]), "peak": max(peaks[f]),
                **workers[f].info} for f in frameworks}
  finally:
    for worker in workers.values():
      worker.close()


def _ratio(repeats: list[dict], other: str, framework: str) -> str:
  """Median over repeats of (other's time / this one's), with the range when repeated."""
  if other not in repeats[0]:
    return "n/a"
  if other == framework:
    return "1.00x"
  ratios = sorted(r[other]["ms"] / r[framework]["ms"] for r in repeats)
  text = f"{statistics.median(ratios):.2f}x"
  return text + (f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else "")


def table(results: dict, frameworks) -> str:
  """results: shape -> one `bench_shape` result per repeat."""
  peak = max(r[f]["peak"] for repeats in results.values() for r in repeats for f in frameworks)
  lines = ["| shape | framework | examples/s | ms/step | vs PyTorch | vs flax | % of matmul peak "
           "| compile s | XLA temp MiB | peak RSS MiB |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for shape, repeats in results.items():
    batch = SHAPES[shape][-1]
    flops = step_flops(shape)
    for f in frameworks:
      median = lambda key: statistics.median(r[f][key] for r in repeats)
      ms = median("ms")
      compile_s = f"{median('compile_s'):.2f}" + (" (1st step)" if f == "torch" else "")
      temp = f"{repeats[0][f]['temp_mib']:.1f}" if repeats[0][f].get("temp_mib") is not None else "-"
      lines.append(f"| {shape} | {f} | {1e3 * batch / ms:,.0f} | {ms:.2f} | "
                   f"{_ratio(repeats, 'torch', f)} | {_ratio(repeats, 'flax', f)} | "
                   f"{100 * flops / (ms / 1e3) / (peak * 1e9):.1f}% | {compile_s} | "
                   f"{temp} | {max(r[f]['rss_mib'] for r in repeats):.0f} |")
  lines.append("")
  lines.append("compile s: XLA compile of the step (lower + compile); for PyTorch, which is eager, "
               "the first step. XLA temp: `compiled.memory_analysis()` temp bytes. Peak RSS: "
               "the worker process's maximum resident memory (libraries included).")
  lines.append(f"Matmul peak (best of jnp.dot / torch.mm, {PEAK_N}^3 float32, same run): "
               f"{peak:.0f} GFLOP/s. Ratios: time of the other framework / time of this one "
               "(> 1: this one is faster).")
  if len(next(iter(results.values()))) > 1:
    lines.append("With --repeats: ms/step and compile s are medians over the repeats, ratios "
                 "the median of the per-repeat ratios (lowest-highest in brackets), the matmul "
                 "peak and peak RSS the highest, XLA temp from the first repeat (it is the "
                 "same compiled step each time).")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- rnn_jax only

def long_sequences(quick: bool) -> str:
  """Sequential MNIST LSTM 128: step time vs T, and temp memory with and without remat."""
  from rnn_jax import cli
  cli.setup_process()
  import jax
  import numpy as np
  from rnn_jax import models
  batch = 32  # Keeps the 784-step case to about a second per step on 2 cores.
  lines = [f"Sequential MNIST (T x 1 input, LSTM 128, batch {batch}, Adam), rnn_jax:", "",
           "| T | remat | ms/step | ms/step per 100 steps | XLA temp MiB | compile s |",
           "|---|---|---|---|---|---|"]
  rng = np.random.default_rng(0)
  for steps in (98, 196, 392, 784):
    for remat in (False, True):
      model = models.SequenceModel(cell="lstm", input_size=1, hidden_size=128, num_outputs=10,
                                   remat=remat)
      data = {"inputs": jax.device_put(rng.random((batch, steps, 1), dtype=np.float32)),
              "labels": jax.device_put(rng.integers(0, 10, batch).astype(np.int32))}
      runner, state, compile_s = common.jit_runner(model, data)
      memory = runner.compiled(data).memory_analysis()
      for _ in range(2):
        state, _ = runner.train(state, data)
      jax.block_until_ready(state)
      times = []
      for _ in range(3 if quick else 5):
        start = time.perf_counter()
        state, _ = runner.train(state, data)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
      ms = 1e3 * statistics.median(times)
      lines.append(f"| {steps} | {remat} | {ms:.1f} | {100 * ms / steps:.2f} | "
                   f"{memory.temp_size_in_bytes / 2 ** 20:.1f} | {compile_s:.2f} |")
  return "\n".join(lines)


def config_compile_times() -> str:
  """Compile time of the training step of every config in configs/ (synthetic batches).

  Ablation configs (`config.base` + `config.sweep`): the base training config at every point
  of the sweep over training-config fields, one seed under `jax.jit` (the ablation runner's
  vmap over seeds is not what is timed here).
  """
  import glob
  import importlib
  import itertools
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  lines = ["| config | cell | T | compile s (wall) | compile s (CPU) |", "|---|---|---|---|---|"]
  for path in sorted(glob.glob(os.path.join(root, "configs", "*.py"))):
    name = os.path.basename(path)[:-3]
    if name in ("__init__", "base", "seeds"):  # seeds wraps the others.
      continue
    config = importlib.import_module(f"configs.{name}").get_config()
    points = [(name, config)]
    if "base" in config and "sweep" in config:
      sweep = {k: v for k, v in dict(config.sweep).items() if k in config.base}
      points = []
      for values in itertools.product(*sweep.values()):
        point = config.base.copy_and_resolve_references()
        with point.unlocked():
          for key, value in zip(sweep, values):
            point[key] = value
        label = ", ".join(f"{k}={v}" for k, v in zip(sweep, values))
        points.append((f"{name} ({label})" if label else name, point))
    for label, point in points:
      try:
        cpu_start = time.process_time()
        steps, seconds = _compile_config(point)
        cpu = time.process_time() - cpu_start
        lines.append(f"| {label} | {point.cell} x{point.num_layers}"
                     f"{' bi' if point.get('bidirectional') else ''} | {steps} | {seconds:.2f} | "
                     f"{cpu:.2f} |")
      except Exception as error:  # Report and go on: one odd config must not hide the rest.
        lines.append(f"| {label} | - | - | skipped: {type(error).__name__}: {error} | - |")
  return "\n".join(lines)


def _compile_config(config) -> tuple[int, float]:
  from rnn_jax import cli
  cli.setup_process()
  import jax
  import numpy as np
  from rnn_jax import lm, train
  batch_size = config.batch_size
  if "window" in config:  # A language model (rnn_jax/lm.py): its step on one window.
    model = lm.build_model(config)
    tx, _ = train.build_optimizer(config, 10_000)
    state = train.create_train_state(model, tx, config.seed)
    tokens = np.ones((batch_size, config.window), np.int32)
    start = time.perf_counter()
    lm.jit_step(model, tx).lower(state, lm.zero_carries(model, batch_size), tokens,
                                 tokens).compile()
    return config.window, time.perf_counter() - start
  if config.dataset in ("mnist", "fashion_mnist"):
    steps, features = (28, 28) if config.sequence == "rows" else (784, 1)
    batch = {"inputs": np.zeros((batch_size, steps, features), np.float32),
             "labels": np.zeros((batch_size,), np.int32)}
    task = _FakeTask("features", features, 10)
  elif config.dataset == "imdb_reviews":
    steps = config.max_len
    batch = {"inputs": np.ones((batch_size, steps), np.int32),
             "labels": np.zeros((batch_size,), np.int32),
             "lengths": np.full((batch_size,), steps, np.int32)}
    task = _FakeTask("tokens", config.vocab_size, 2)
  elif config.dataset == "adding":
    steps = config.sequence_length
    batch = {"inputs": np.zeros((batch_size, steps, 2), np.float32),
             "labels": np.zeros((batch_size,), np.float32)}
    task = _FakeTask("features", 2, 0)
  else:
    raise ValueError(f"no synthetic batch for dataset {config.dataset!r}")
  model = train.build_model(config, task)
  _, _, compile_s = common.jit_runner(model, {k: jax.device_put(v) for k, v in batch.items()},
                                      config.seed, config)
  return steps, compile_s


class _FakeTask:
  """What `train.build_model` reads from a data task, without loading any data."""

  def __init__(self, input_kind, input_size, num_classes):
    self.input_kind, self.input_size, self.num_classes = input_kind, input_size, num_classes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="Fewer rounds and steps.")
  parser.add_argument("--out", help="Also write the Markdown report to this file.")
  parser.add_argument("--shapes", default=",".join(SHAPES), help="Comma-separated shapes.")
  parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None, help="Steps per timed round.")
  parser.add_argument("--repeats", type=int, default=1,
                      help="Run every shape this many times with fresh workers (the machine's "
                           "speed drifts over minutes); report medians and ranges.")
  parser.add_argument("--long", action="store_true", help="Add the sequential-MNIST section.")
  parser.add_argument("--configs", action="store_true", help="Add compile times per config.")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--shape", help=argparse.SUPPRESS)
  parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker_main(args.worker, args.shape, json.loads(args.options))
    return

  frameworks = [f for f in args.frameworks.split(",") if f]
  notes = []
  if "torch" in frameworks and not torch_available():
    frameworks.remove("torch")
    notes.append("PyTorch is not installed: its column is skipped (pip install torch).")
  rounds = args.rounds or (5 if args.quick else 15)
  steps = args.steps or (5 if args.quick else 20)
  results = {}
  for repeat in range(args.repeats):
    for shape in filter(None, args.shapes.split(",")):  # --shapes= : compile times only.
      print(f"{shape} ({repeat + 1}/{args.repeats}) ...", file=sys.stderr, flush=True)
      results.setdefault(shape, []).append(bench_shape(shape, frameworks, rounds, steps))
  report = []
  if results:
    report.append(table(results, frameworks))
    load = os.getloadavg()
    report.append(f"\n{rounds} interleaved rounds of {steps} steps per framework, medians"
                  f"{f', {args.repeats} repeats' if args.repeats > 1 else ''}; "
                  f"load average at the end {load[0]:.2f} on {os.cpu_count()} CPUs.")
  report.extend(notes)
  if args.long:
    report.append("\n" + long_sequences(args.quick))
  if args.configs:
    report.append("\n" + config_compile_times())
  text = "\n".join(report)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
