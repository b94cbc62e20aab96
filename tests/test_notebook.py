"""notebooks/colab_tpu.ipynb runs top to bottom: executed with nbclient on tiny settings.

The parameters cell is overridden (as papermill does, by a cell injected after it) with
TINY=True, and with the real MNIST when the prepared TFDS data dir holds it, else with
USE_MOCK_DATA=True. Any cell that raises fails the test.
"""

import glob
import json
import os
import pathlib

import pytest

from conftest import REAL_DATA_DIR

nbformat = pytest.importorskip(
    "nbformat", reason="nbformat is not installed; pip install -r requirements-dev.txt")
nbclient = pytest.importorskip(
    "nbclient", reason="nbclient is not installed; pip install -r requirements-dev.txt")
pytest.importorskip(
    "ipykernel", reason="ipykernel is not installed; pip install -r requirements-dev.txt")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "colab_tpu.ipynb"
CELL_TIMEOUT_S = 600  # Per cell; the whole notebook takes about a minute on 2 idle cores.


def _has_real(dataset: str) -> bool:
  return bool(glob.glob(os.path.join(REAL_DATA_DIR, dataset, "*", "dataset_info.json")) or
              glob.glob(os.path.join(REAL_DATA_DIR, dataset, "*", "*", "dataset_info.json")))


def _unmet_requirements() -> list[str]:
  """requirements.txt lines this environment does not satisfy (the notebook would pip them)."""
  from importlib import metadata
  from packaging.requirements import Requirement
  unmet = []
  for line in (ROOT / "requirements.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
      continue
    requirement = Requirement(line)
    if requirement.marker is not None and not requirement.marker.evaluate():
      continue
    try:
      version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
      version = None
    if version is None or not requirement.specifier.contains(version, prereleases=True):
      unmet.append(line)
  return unmet


def _with_parameters(nb, parameters: dict):
  """`nb` with a cell setting `parameters` right after its cell tagged 'parameters'."""
  index = next((i for i, cell in enumerate(nb.cells)
                if "parameters" in cell.get("metadata", {}).get("tags", [])), None)
  assert index is not None, f"{NOTEBOOK} has no cell tagged 'parameters'."
  source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
  injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
  nb.cells.insert(index + 1, injected)
  return nb


def _execute(nb, monkeypatch):
  """Runs `nb` in a fresh kernel started in notebooks/; raises CellExecutionError on an error."""
  # The kernel inherits this environment: give it a plain CPU machine, not the 4 fake devices
  # conftest.py sets up for the data-parallel tests.
  flags = os.environ.get("XLA_FLAGS", "").replace(
      "--xla_force_host_platform_device_count=4", "").strip()
  if flags:
    monkeypatch.setenv("XLA_FLAGS", flags)
  else:
    monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  client = nbclient.NotebookClient(
      nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=False,
      resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()
  return nb


def _outputs(nb, output_type: str) -> list:
  return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
          if o.get("output_type") == output_type]


def test_notebook_is_committed_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
           and (cell.get("outputs") or cell.get("execution_count") is not None)]
  assert not dirty, (f"Code cells {dirty} of {NOTEBOOK} hold outputs; clear them before "
                     "committing (jupyter nbconvert --clear-output --inplace).")


def test_a_failing_cell_fails_the_run(monkeypatch):
  nb = _with_parameters(nbformat.read(NOTEBOOK, as_version=4), {"TINY": True})
  nb.cells = nb.cells[:nb.cells.index(next(
      c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))) + 1]
  nb.cells.append(nbformat.v4.new_code_cell("raise ValueError('broken on purpose')"))
  with pytest.raises(nbclient.exceptions.CellExecutionError, match="broken on purpose"):
    _execute(nb, monkeypatch)


@pytest.mark.slow  # ~100 s: the default run keeps the notebook's cheaper checks.
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  unmet = _unmet_requirements()
  if unmet:  # Else the notebook's install cell would run pip on this environment.
    pytest.fail(f"This environment lacks {unmet} from requirements.txt. Fix: pip install -r "
                "requirements-dev.txt, then run the test again.")
  real = _has_real("mnist")
  parameters = {"TINY": True, "USE_MOCK_DATA": not real,
                "DATA_DIR": REAL_DATA_DIR if real else None, "WORKDIR": str(tmp_path / "runs")}
  nb = _execute(_with_parameters(nbformat.read(NOTEBOOK, as_version=4), parameters),
                monkeypatch)

  summary_path = tmp_path / "runs" / "mnist_lstm" / "summary.json"
  assert summary_path.exists(), f"the training cell wrote no {summary_path}"
  summary = json.loads(summary_path.read_text())
  assert summary["config"]["hidden_size"] == 8 and summary["steps"] > 0
  assert 0.0 <= summary["test_accuracy"] <= 1.0
  if real:  # A few dozen steps of a tiny LSTM already beat chance (0.1) on real digits.
    assert summary["test_accuracy"] > 0.2, summary["test_accuracy"]

  ablation = tmp_path / "runs" / "ablate_mnist_cells"
  table = (ablation / "results.md").read_text()
  assert "| setting |" in table and "cell=rnn" in table and "cell=lstm" in table, table
  assert (ablation / "plots" / "grad_norm_through_time.png").exists()

  displayed = _outputs(nb, "display_data")
  assert sum("image/png" in o.get("data", {}) for o in displayed) >= 4  # 2 curves + 2 plots
  assert any("cell=lstm" in o.get("data", {}).get("text/markdown", "") for o in displayed)
  streams = "".join(o.get("text", "") for o in _outputs(nb, "stream"))
  assert "All requirements are installed" in streams, streams[:2000]
  assert "backend: cpu" in streams
