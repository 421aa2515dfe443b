import sys
from pathlib import Path

# ``inproc`` (the in-process scheduler harness) is imported by the tests of this folder and by
# benchmark/sched_overhead.py.
sys.path.insert(0, str(Path(__file__).resolve().parent))
