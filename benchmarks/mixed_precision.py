"""Training-step time with bfloat16 matmuls (`compute_dtype`) against float32, same process.

    python -m benchmarks.mixed_precision [--rounds 7] [--steps 5] [--cells rnn,lstm,gru,mgu,...]

For each cell and shape (row MNIST: 28 steps x 28 features, hidden 128; IMDB: 80 tokens,
embedding 100, hidden 64; batch 128, Adam), the real `train.train_step` is compiled for both
dtypes, then timed in interleaved rounds; prints median ms per step and the float32 / bfloat16
ratio (> 1: bfloat16 is faster). On a CPU without native bfloat16 matmuls the ratio is below 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks import common


SHAPES = {  # name: (input kind, steps, input size or vocabulary, embed, hidden, outputs)
    "row MNIST": ("features", 28, 28, 0, 128, 10),
    "IMDB 80 tokens": ("tokens", 80, 10000, 100, 64, 2),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--cells", default="rnn,lstm,gru,mgu,mingru,minlstm,rglru,lru")
  args = parser.parse_args()
  from rnn_jax import cli
  cli.setup_process()
  import jax
  import numpy as np
  from rnn_jax import models

  rng = np.random.default_rng(0)
  print(f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}; jax {jax.__version__}")
  print("| shape | cell | float32 ms | bfloat16 ms | float32 / bfloat16 |\n|---|---|---|---|---|")
  for shape, (kind, steps, size, embed, hidden, outputs) in SHAPES.items():
    batch = {"labels": rng.integers(0, outputs, 128).astype(np.int32)}
    batch["inputs"] = (rng.integers(1, size, (128, steps)).astype(np.int32) if kind == "tokens"
                       else rng.random((128, steps, size), dtype=np.float32))
    for cell in args.cells.split(","):
      runners = {}
      for dtype in ("float32", "bfloat16"):
        model = models.SequenceModel(cell=cell, input_kind=kind, input_size=size,
                                     embed_size=embed, hidden_size=hidden, num_outputs=outputs,
                                     compute_dtype=dtype)
        runner, state, _ = common.jit_runner(model, batch)
        state, _ = runner.train(state, batch)
        jax.block_until_ready(state)
        runners[dtype] = [runner, state]
      times = {dtype: [] for dtype in runners}
      for _ in range(args.rounds):
        for dtype, holder in runners.items():
          start = time.perf_counter()
          for _ in range(args.steps):
            holder[1], metrics = holder[0].train(holder[1], batch)
          jax.block_until_ready(metrics)
          times[dtype].append((time.perf_counter() - start) / args.steps * 1e3)
      f32, b16 = (statistics.median(times[d]) for d in ("float32", "bfloat16"))
      print(f"| {shape} | {cell} | {f32:.1f} | {b16:.1f} | {f32 / b16:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
