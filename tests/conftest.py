"""Shared pytest configuration.

Four fake CPU devices, so the data-parallel paths (sharded jit, pmap) run on any machine;
XLA reads this flag once, before JAX initialises, which is why it is set here at import time.
"""

import glob
import os
import shutil
import sys
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# One XLA compilation cache for the whole run, made fresh by the first process that imports
# this file and inherited by pytest-xdist's workers and by the commands tests launch: many
# tests compile the same small programs (a train step at the same shapes), and a hit skips
# XLA's compiler. Every program is cached (no minimum compile time or size). A cache dir the
# caller set is kept, and not removed afterwards.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rnn_jax_tests_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The prepared TFDS data dir: $TFDS_DATA_DIR, else ../shared/tensorflow_datasets beside the repo.
REAL_DATA_DIR = os.environ.get("TFDS_DATA_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "shared", "tensorflow_datasets")


def real_data_dir(dataset: str) -> str:
  """REAL_DATA_DIR if it holds `dataset` prepared by tfds; otherwise skips the test."""
  if not glob.glob(os.path.join(REAL_DATA_DIR, dataset, "*", "dataset_info.json")) and \
     not glob.glob(os.path.join(REAL_DATA_DIR, dataset, "*", "*", "dataset_info.json")):
    pytest.skip(f"{dataset} is not prepared under {REAL_DATA_DIR}; set TFDS_DATA_DIR to a "
                "prepared TFDS data dir to run this test.")
  return REAL_DATA_DIR


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "real_data: reads a prepared TFDS data dir ($TFDS_DATA_DIR, else "
      "../shared/tensorflow_datasets); skips when the dataset is not there. "
      'Deselect with -m "not real_data".')
  config.addinivalue_line(
      "markers", "slow: long-running (fault injection, multi-process); run with -m slow.")


def pytest_unconfigure(config):
  """The process that made the compilation cache removes it when the run ends (its workers
  and children found the dir already set, so for them _OWN_CACHE is False)."""
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
