"""The dependency files agree with each other, CI and the README, and the notebook's install
cell accepts a Colab runtime's newer jax.

requirements.txt holds ranges (tested lower bounds, no cap on the JAX stack), requirements-lock.txt
one exact tested point inside them, and CI installs through the lock.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re
import subprocess
import sys

import pytest

packaging_requirements = pytest.importorskip("packaging.requirements")
packaging_utils = pytest.importorskip("packaging.utils")

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-lock.txt"
# The platform the lock was made on: its markers decide which requirements it must pin.
LOCK_PLATFORM = {"sys_platform": "linux", "platform_machine": "x86_64", "python_version": "3.11",
                 "platform_system": "Linux", "os_name": "posix"}
JAX_STACK = ("jax", "flax", "optax", "orbax-checkpoint")


def _requirements(path: pathlib.Path) -> list:
  """The requirements of a requirements file, following `-r other.txt`."""
  found = []
  for line in path.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line.startswith("-r "):
      found += _requirements(path.parent / line[3:].strip())
    elif line and not line.startswith("-"):
      found.append(packaging_requirements.Requirement(line))
  return found


def _lock() -> dict[str, str]:
  pins = {}
  for line in LOCK.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
    assert match, f"{LOCK.name}: {line!r} is not an exact `name==version` pin."
    pins[packaging_utils.canonicalize_name(match.group(1))] = match.group(2)
  return pins


def test_the_lock_pins_every_requirement_inside_its_range():
  pins = _lock()
  for requirement in _requirements(ROOT / "requirements-dev.txt"):
    if requirement.marker is not None and not requirement.marker.evaluate(LOCK_PLATFORM):
      continue
    name = packaging_utils.canonicalize_name(requirement.name)
    assert name in pins, (f"{requirement} is not in {LOCK.name}. Fix: regenerate the lock as "
                          "its header says.")
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"{LOCK.name} pins {name}=={pins[name]}, outside {requirement}.")


def test_ci_and_the_readme_install_through_the_lock():
  command = ("pip install -q -r requirements-dev.txt -c requirements-lock.txt && "
             "python -m pytest -n 2")
  assert command in (ROOT / ".ci" / "run").read_text()
  assert command in (ROOT / "README.md").read_text()


def test_the_jax_stack_has_a_lower_bound_and_no_cap():
  requirements = {packaging_utils.canonicalize_name(r.name): r
                  for r in _requirements(ROOT / "requirements.txt")}
  pins = _lock()
  for name in JAX_STACK:
    specifier = requirements[name].specifier
    assert not specifier.contains("0.0.1"), f"{name} needs a lower bound"
    assert specifier.contains(pins[name]), f"{name}: the locked version is outside the range"
    assert specifier.contains("99.0"), (
        f"requirements.txt caps {name} ({specifier}): a Colab runtime with a newer {name} "
        "would have it downgraded on install.")


def _install_cell_functions(installed: dict[str, str | None]) -> dict:
  """The notebook install cell's functions, with `installed_version` answering from a dict."""
  nb = json.loads((ROOT / "notebooks" / "colab_tpu.ipynb").read_text())
  source = next("".join(c["source"]) for c in nb["cells"]
                if c["cell_type"] == "code" and "def unmet_requirements" in "".join(c["source"]))
  tree = ast.parse(source)
  tree.body = [node for node in tree.body
               if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
  namespace = {"pathlib": pathlib, "sys": sys, "subprocess": subprocess}
  exec(compile(tree, "colab_tpu.ipynb install cell", "exec"), namespace)  # pylint: disable=exec-used
  namespace["installed_version"] = lambda dist: installed.get(
      packaging_utils.canonicalize_name(dist))
  return namespace


def test_the_notebook_install_cell_keeps_a_newer_jax():
  """A runtime with everything at the lock's versions but a newer JAX stack installs nothing."""
  installed = dict(_lock())
  installed.update({"jax": "0.12.3", "jaxlib": "0.12.3", "flax": "0.14.0", "optax": "0.3.1",
                    "orbax-checkpoint": "0.14.2"})
  cell = _install_cell_functions(installed)
  assert cell["unmet_requirements"](ROOT / "requirements.txt") == []
  # And the check is live: a jax older than the lower bound is reported.
  installed["jax"] = "0.9.2"
  assert [r.split(">")[0] for r in cell["unmet_requirements"](ROOT / "requirements.txt")] == ["jax"]
