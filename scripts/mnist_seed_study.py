"""Seed study: does rnn_jax's row-MNIST vanilla RNN (configs/mnist_rnn_seed_5ep.py) lag PyTorch?

Measures the validation accuracy after each of 5 epochs and the test accuracy of the same
model (BasicRNNCell-style tanh RNN of 150 units over the 28 rows, dense to 10 logits, Adam 1e-3,
batch 150) trained by rnn_jax (`train.train_and_evaluate`, unchanged) and by a PyTorch twin,
over several seeds, with one ingredient changed at a time:

  framework  jax (rnn_jax) | torch (nn.RNN + nn.Linear, torch.optim.Adam(lr=1e-3, eps=1e-8))
  init       tf1   = rnn_jax's own init for the seed: Glorot-uniform over [x, h] ('joint_glorot'),
                     zero biases, Glorot head (TF1's BasicRNNCell + dense);
             torch = PyTorch's defaults for the seed (torch.manual_seed(seed), then nn.RNN and
                     nn.Linear: U(-1/sqrt(150), 1/sqrt(150)) weights and biases).
             A run of either framework with a given (init, seed) starts from the very same
             function: torch gets rnn_jax's init through rnn_jax.interop, rnn_jax gets torch's
             (train.create_train_state is wrapped for that run; nothing else changes).
  bias       one = a single trained bias b, as rnn_jax and TF1's BasicRNNCell have (torch:
                   bias_ih holds b = bias_ih + bias_hh of the init, bias_hh is frozen at 0);
             two = nn.RNN's own bias_ih and bias_hh, both trained (torch only). Their sum is the
                   same function, but Adam moves each by ~lr per step, so b learns twice as fast.
  split      tfds  = validation is the first 5,000 images of the tfds train split (rnn_jax);
             idx   = the first 5,000 of the original train-images-idx3-ubyte file (the notebook's
                     keras.datasets.mnist / input_data order; tfds stores the images in another
                     order, so these are mostly other images);
             disjoint = train on the 60,000 minus both sets, report accuracy on each (paired).

Both frameworks see the same float32 batches (pixel / 255), in the same order: epoch e of seed
s is rnn_jax's `np.random.default_rng([s, e]).permutation`, 366 batches of 150 (the last 100
images dropped, as rnn_jax does). Each run is saved as
OUT/<framework>_<init>_<bias>_<split>/seed_<s>.json
and skipped when that file exists; the table of everything under OUT is printed at the end.

  TFDS_DATA_DIR=../shared/tensorflow_datasets \\
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
  nice -n 5 python scripts/mnist_seed_study.py --runs=jax:tf1:one:tfds,torch:torch:two:tfds \\
      --seeds=0-5 --out=/tmp/mnist_seed_study
  python scripts/mnist_seed_study.py --table --out=/tmp/mnist_seed_study   # the table only

Single-threaded (XLA_FLAGS above, torch.set_num_threads(1)), one run at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS",
                      "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

FRAMEWORKS, INITS, BIASES = ("jax", "torch"), ("tf1", "torch"), ("one", "two")
SPLITS = ("tfds", "idx", "disjoint")
HIDDEN, BATCH, EPOCHS, LR, VALIDATION = 150, 150, 5, 1e-3, 5000
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "shared")  # ../shared beside the repository.
RAW_DIR = os.path.join(SHARED, "data", "mnist")


# ----------------------------------------------------------------------------- data

def read_idx(path: str, header: int) -> np.ndarray:
  with gzip.open(path) as f:
    return np.frombuffer(f.read(), np.uint8, offset=header)


def load_data(data_dir: str, raw_dir: str, split: str) -> dict:
  """{'train': (images [N, 784] uint8, labels), 'val_<set>': ..., 'test': ...}.

  The tfds arrays are read with rnn_jax's own reader (`common.read_splits`), and the idx file
  is used only to know which images are its first 5,000.
  """
  from rnn_jax.data import common
  raw, _ = common.read_splits("mnist", ("train", "test"), data_dir=data_dir, download=False)
  x, y = raw["train"]["image"].reshape(-1, 784), raw["train"]["label"].astype(np.int32)
  test = (raw["test"]["image"].reshape(-1, 784), raw["test"]["label"].astype(np.int32))
  if split == "tfds":
    return {"train": (x[VALIDATION:], y[VALIDATION:]), "val_tfds": (x[:VALIDATION], y[:VALIDATION]),
            "test": test}
  # The idx file holds the same 60,000 images in another order: find each one in tfds.
  idx_images = read_idx(os.path.join(raw_dir, "train-images-idx3-ubyte.gz"), 16).reshape(-1, 784)
  idx_labels = read_idx(os.path.join(raw_dir, "train-labels-idx1-ubyte.gz"), 8).astype(np.int32)
  where = {image.tobytes(): i for i, image in enumerate(x)}
  in_tfds = np.array([where[image.tobytes()] for image in idx_images])
  assert len(set(in_tfds)) == len(x) and np.array_equal(y[in_tfds], idx_labels)
  if split == "idx":  # In the idx file's order, as the notebook read it.
    return {"train": (idx_images[VALIDATION:], idx_labels[VALIDATION:]),
            "val_idx": (idx_images[:VALIDATION], idx_labels[:VALIDATION]), "test": test}
  held = np.zeros(len(x), bool)
  held[:VALIDATION] = True
  held[in_tfds[:VALIDATION]] = True
  return {"train": (x[~held], y[~held]), "val_tfds": (x[:VALIDATION], y[:VALIDATION]),
          "val_idx": (idx_images[:VALIDATION], idx_labels[:VALIDATION]), "test": test}


def batch_rows(num_train: int, seed: int, epoch: int):
  from rnn_jax.data import common
  order = common.epoch_order(num_train, seed, epoch)  # rnn_jax's train order.
  for step in range(num_train // BATCH):
    yield order[step * BATCH:(step + 1) * BATCH]


def to_inputs(images: np.ndarray) -> np.ndarray:
  inputs = images.astype(np.float32)
  inputs /= np.float32(255)  # As rnn_jax's make_batch: exactly float32(pixel / 255).
  return inputs.reshape(-1, 28, 28)


# ----------------------------------------------------------------------------- inits

def rnn_jax_config(seed: int, data_dir: str):
  from configs import mnist_rnn_seed_5ep
  config = mnist_rnn_seed_5ep.get_config()
  config.seed, config.data_dir = seed, data_dir
  config.progress_bar = config.plots = False
  return config


def tf1_init(seed: int) -> dict:
  """rnn_jax's initial params for `seed` (those train_and_evaluate starts from), as NumPy."""
  import jax
  import optax
  from rnn_jax import models, train
  model = models.SequenceModel(cell="rnn", cell_options=(("recurrent_init", "joint_glorot"),),
                               input_size=28, hidden_size=HIDDEN, num_outputs=10)
  params = train.create_train_state(model, optax.adam(LR), seed).params
  return jax.tree.map(np.asarray, params)


def torch_net(seed: int):
  """nn.RNN(28, 150, tanh) + nn.Linear(150, 10) on the final state, PyTorch's init for `seed`."""
  import torch
  from torch import nn

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.rnn = nn.RNN(28, HIDDEN, batch_first=True)
      self.head = nn.Linear(HIDDEN, 10)

    def forward(self, x):
      _, h = self.rnn(x)
      return self.head(h[-1])

  torch.manual_seed(seed)
  return Net()


def torch_init(seed: int) -> dict:
  """PyTorch's default init for `seed`, as rnn_jax params (NumPy)."""
  from rnn_jax import interop
  net = torch_net(seed)
  state = {k: v.detach().numpy() for k, v in net.rnn.state_dict().items()}
  return {"rnn": [{"fwd": {k: np.asarray(v) for k, v in
                           interop.from_torch(state, "rnn")[0]["fwd"].items()}}],
          "head": {"w": net.head.weight.detach().numpy().T.copy(),
                   "b": net.head.bias.detach().numpy().copy()}}


# ----------------------------------------------------------------------------- training

@contextlib.contextmanager
def starting_from(params):
  """train_and_evaluate, but starting from `params` (its optimizer state made for them)."""
  import jax.numpy as jnp
  from rnn_jax import train
  original = train.create_train_state

  def create(model, tx, seed):
    state = original(model, tx, seed)
    start = {"rnn": [{"fwd": {k: jnp.asarray(v) for k, v in params["rnn"][0]["fwd"].items()}}],
             "head": {k: jnp.asarray(v) for k, v in params["head"].items()}}
    return state.replace(params=start, opt_state=tx.init(start))

  train.create_train_state = create
  try:
    yield
  finally:
    train.create_train_state = original


def run_jax(init: str, seed: int, workdir: str, data_dir: str) -> dict:
  """rnn_jax's own training loop (tfds split only: that is what its loader carves)."""
  from rnn_jax import reporting, train
  config = rnn_jax_config(seed, data_dir)
  context = contextlib.nullcontext() if init == "tf1" else starting_from(torch_init(seed))
  with context:
    summary = train.train_and_evaluate(config, workdir)
  epochs = reporting.read_metrics(workdir, "epoch")
  losses = {r["step"]: r["loss"] for r in reporting.read_metrics(workdir, "train")
            if r["step"] % 50 == 0}
  return {"val": {"tfds": [r["validation_accuracy"] for r in epochs]},
          "test": summary["test_accuracy"], "loss_every_50": losses}


def run_torch(init: str, bias: str, seed: int, data: dict) -> dict:
  import torch
  from rnn_jax import interop
  torch.set_num_threads(1)
  torch.set_flush_denormal(True)
  net = torch_net(seed)
  if init == "tf1":  # Start from rnn_jax's very weights for this seed.
    params = tf1_init(seed)
    net.rnn.load_state_dict({k: torch.from_numpy(v) for k, v in
                             interop.to_torch(params["rnn"], "rnn").items()})
    net.head.weight.data = torch.from_numpy(params["head"]["w"].T.copy())
    net.head.bias.data = torch.from_numpy(params["head"]["b"].copy())
  if bias == "one":  # One trained bias, as in rnn_jax: b = bias_ih, bias_hh frozen at 0.
    with torch.no_grad():
      net.rnn.bias_ih_l0 += net.rnn.bias_hh_l0
      net.rnn.bias_hh_l0.zero_()
    net.rnn.bias_hh_l0.requires_grad_(False)
  trained = [p for p in net.parameters() if p.requires_grad]
  opt = torch.optim.Adam(trained, lr=LR, betas=(0.9, 0.999), eps=1e-8)
  train_x, train_y = data["train"]
  val_sets = {k[4:]: v for k, v in data.items() if k.startswith("val_")}

  def accuracy(images, labels):
    net.eval()
    with torch.no_grad():
      correct = sum(int((net(torch.from_numpy(to_inputs(images[i:i + 1000]))).argmax(-1)
                         == torch.from_numpy(labels[i:i + 1000])).sum())
                    for i in range(0, len(images), 1000))
    net.train()
    return correct / len(images)

  val, losses, step = {name: [] for name in val_sets}, {}, 0
  for epoch in range(EPOCHS):
    for rows in batch_rows(len(train_x), seed, epoch):
      loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(to_inputs(train_x[rows]))),
                                               torch.from_numpy(train_y[rows]).long())
      opt.zero_grad()
      loss.backward()
      opt.step()
      step += 1
      if step % 50 == 0:
        losses[step] = loss.item()
    for name, (images, labels) in val_sets.items():
      val[name].append(accuracy(images, labels))
    print(f"  epoch {epoch + 1}  " + "  ".join(f"val_{n} {v[-1]:.4f}" for n, v in val.items()),
          flush=True)
  return {"val": val, "test": accuracy(*data["test"]), "loss_every_50": losses}


# ----------------------------------------------------------------------------- table

def load_results(out: str) -> dict:
  results = {}
  for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
    folder = os.path.join(out, name)
    for file in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
      if file.startswith("seed_") and file.endswith(".json"):
        with open(os.path.join(folder, file)) as f:
          results.setdefault(name, []).append(json.load(f))
  return results


def stats(values) -> str:
  v = 100 * np.asarray(values)
  std = v.std(ddof=1) if len(v) > 1 else 0.0
  return f"{v.mean():.2f} ± {std:.2f} [{v.min():.2f}, {v.max():.2f}]"


def table(out: str) -> str:
  lines = ["| run (framework_init_bias_split) | seeds | validation set | val after epoch 5 (%) "
           "mean ± std [min, max] | val, mean of epochs 3-5 (%) | test (%) | CPU s/run |",
           "|---|---|---|---|---|---|---|"]
  for name, runs in load_results(out).items():
    runs = sorted(runs, key=lambda r: r["seed"])
    seeds = ",".join(str(r["seed"]) for r in runs)
    for val_set in runs[0]["val"]:
      final = [r["val"][val_set][-1] for r in runs]
      late = [np.mean(r["val"][val_set][2:]) for r in runs]
      cpu = np.mean([r["cpu_s"] for r in runs])
      lines.append(f"| {name} | {seeds} | {val_set} | {stats(final)} | {stats(late)} | "
                   f"{stats([r['test'] for r in runs])} | {cpu:.0f} |")
  lines += ["", "Per seed: validation after epochs 1..5, test (%)."]
  for name, runs in load_results(out).items():
    for r in sorted(runs, key=lambda r: r["seed"]):
      for val_set, accs in r["val"].items():
        lines.append(f"  {name:22s} seed {r['seed']}  val_{val_set:5s} "
                     + " ".join(f"{100 * a:5.2f}" for a in accs) + f"   test {100 * r['test']:.2f}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def parse_seeds(text: str) -> list[int]:
  seeds = []
  for part in text.split(","):
    first, _, last = part.partition("-")
    seeds += list(range(int(first), int(last or first) + 1))
  return seeds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default="jax:tf1:one:tfds,torch:torch:two:tfds",
                      help="comma-separated framework:init:bias:split, e.g. torch:torch:two:idx")
  parser.add_argument("--seeds", default="0-5", help="e.g. 0-5 or 0,2,7")
  parser.add_argument("--out", default="/tmp/mnist_seed_study")
  parser.add_argument("--data_dir", default=os.environ.get(
      "TFDS_DATA_DIR", os.path.join(SHARED, "tensorflow_datasets")))
  parser.add_argument("--raw_dir", default=RAW_DIR, help="the original *-idx?-ubyte.gz files")
  parser.add_argument("--table", action="store_true", help="only print the table of OUT")
  args = parser.parse_args(argv)
  if not args.table:
    for spec in args.runs.split(","):
      framework, init, bias, split = spec.split(":")
      if (framework not in FRAMEWORKS or init not in INITS or bias not in BIASES
          or split not in SPLITS):
        raise SystemExit(f"Bad run {spec!r}: framework {FRAMEWORKS}, init {INITS}, "
                         f"bias {BIASES}, split {SPLITS}.")
      if framework == "jax" and (split, bias) != ("tfds", "one"):
        raise SystemExit("jax runs are rnn_jax as it is: one bias, its loader's 'tfds' split.")
      name = f"{framework}_{init}_{bias}_{split}"
      data = None
      for seed in parse_seeds(args.seeds):
        file = os.path.join(args.out, name, f"seed_{seed}.json")
        if os.path.exists(file):
          continue
        data = data if data is not None or framework == "jax" else load_data(
            args.data_dir, args.raw_dir, split)
        print(f"== {name} seed {seed}", flush=True)
        wall, cpu = time.perf_counter(), time.process_time()
        if framework == "jax":
          result = run_jax(init, seed, os.path.join(args.out, name, f"workdir_{seed}"),
                           args.data_dir)
        else:
          result = run_torch(init, bias, seed, data)
        result.update(framework=framework, init=init, bias=bias, split=split, seed=seed,
                      wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu)
        os.makedirs(os.path.dirname(file), exist_ok=True)
        with open(file, "w") as f:
          json.dump(result, f, indent=1)
        print(f"   {name} seed {seed}: val " + " ".join(
            f"{k} {v[-1]:.4f}" for k, v in result["val"].items())
              + f"  test {result['test']:.4f}  ({result['wall_s']:.0f} s wall, "
              f"{result['cpu_s']:.0f} s CPU)", flush=True)
  print(table(args.out))


if __name__ == "__main__":
  main()
