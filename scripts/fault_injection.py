"""The fault-injection report from the command line: random SIGKILLs and a SIGTERM of a real
run, resumed to bit-identical parameters, and every bad input of docs/reliability.md as a table.

    python scripts/fault_injection.py [--kills 10] [--seed 0] [--workdir DIR] [--keep]

The checks live in tests/fault_injection.py and run as tests (`python -m pytest -m slow
tests/test_reliability.py` for the kills, the bad inputs in the default test run); this only
runs them outside pytest and prints what each produced.
"""

import os
import runpy

if __name__ == "__main__":
  runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "tests", "fault_injection.py"), run_name="__main__")
