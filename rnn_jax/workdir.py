"""One run per workdir: a lock that a second launch on the same workdir is refused by.

Two processes training in one workdir delete each other's checkpoints and interleave their
metrics, so `train_and_evaluate`, the vmapped seeds and the language model hold
`lock(workdir)` for as long as they run. The lock is an exclusive `fcntl.flock` on
`workdir/LOCK`, which the kernel releases when the holding process exits, however it exits
(a SIGKILL too): a lock file left by a dead process is therefore never in the way, and no
timeout has to guess whether its holder still lives. The file names the holder (host, pid,
start time, command), for the refusal message. With several JAX processes, process 0 takes
the lock and tells the others whether it got it, so all of them stop together.

Not covered: filesystems without working `flock` across machines (some NFS setups); there
two hosts could still share a workdir.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from typing import Iterator

import jax
import numpy as np

LOCK_FILE = "LOCK"


class WorkdirInUseError(RuntimeError):
  """Another live process is training in this workdir."""


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock for the duration of the block; raises WorkdirInUseError
  (naming the holder) when another live process holds it."""
  handle, holder = None, None
  if jax.process_index() == 0:
    handle, holder = _try_lock(os.path.join(workdir, LOCK_FILE))
  acquired = handle is not None or jax.process_index() != 0
  if jax.process_count() > 1:  # Process 0's answer holds for all.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    acquired = bool(int(multihost_utils.broadcast_one_to_all(np.int32(acquired))))
  if not acquired:
    raise WorkdirInUseError(
        f"The workdir {workdir} is in use by another run ({holder or 'see process 0'}). Two "
        "runs in one workdir would delete each other's checkpoints. Fix: wait for it to "
        "finish or stop it, or use another --workdir.")
  try:
    yield
  finally:
    if handle is not None:
      handle.close()  # Closing the file releases the lock; the file stays, naming no one.


def _try_lock(path: str):
  """(open file holding the lock, None), or (None, description of the holder)."""
  try:
    handle = open(path, "a+", encoding="utf-8")
  except OSError as e:
    return None, f"{path} cannot be opened: {e.strerror or e}"
  try:
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    handle.seek(0)
    text = handle.read()
    handle.close()
    try:
      info = json.loads(text)
      holder = (f"pid {info['pid']} on {info['host']}, started {info['started']}: "
                f"{info['command']}")
    except (ValueError, KeyError, TypeError):
      holder = "a process that has not yet written its name"
    return None, holder
  handle.seek(0)
  handle.truncate()
  handle.write(json.dumps({
      "pid": os.getpid(), "host": socket.gethostname(),
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": " ".join(sys.argv)}))
  handle.flush()
  return handle, None
