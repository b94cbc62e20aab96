"""rnn_jax: recurrent neural networks as pure JAX functions.

Importing the package sets one XLA:CPU flag, `--xla_cpu_experimental_ynn_fusion_type=` (empty:
no YNNPACK dot fusions), because the small recurrent matmuls of an RNN step run about 40%
faster without those fusions on x86 CPUs, which cuts a CPU training step by ~15% (see
benchmarks/speed.py). XLA reads XLA_FLAGS once, when its CPU backend starts, so the flag is
set only when all of these hold:
- XLA_FLAGS is not in the environment (any value the user set, even an empty one, is kept:
  `XLA_FLAGS= python ...` turns this off);
- no JAX backend has started yet in this process (otherwise the flag would silently not apply);
- the installed jaxlib is one this flag is known to exist in (0.10.x): an unknown flag in
  XLA_FLAGS aborts the process, so other versions get nothing.
It only affects the CPU backend; GPU and TPU ignore it.
"""

import os as _os
import sys as _sys

_CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="


def _jax_backend_started() -> bool:
  if "jax" not in _sys.modules:
    return False
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except Exception:  # A private API: if it moved, assume the worst.
    return True


def _flag_known() -> bool:
  try:
    from importlib import metadata
    major, minor = (int(p) for p in metadata.version("jaxlib").split(".")[:2])
  except Exception:
    return False
  return (major, minor) == (0, 10)


if "XLA_FLAGS" not in _os.environ and not _jax_backend_started() and _flag_known():
  _os.environ["XLA_FLAGS"] = _CPU_FLAGS
