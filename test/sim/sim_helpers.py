"""Helpers shared by the simulator tests (imported by module name; the test dirs are not packages)."""

import numpy as np

from sglang_fair.policy import CostModel
from sglang_fair.sim import Workload

A100 = CostModel(0.0087, 5.42e-05, 2.86e-07, 1.35e-05, 1.185e-08, name="a100-test")
#: An engine with a dear extend path (SGLang's CPU backend): FairBatching defers small chunks there.
CPU_LIKE = CostModel(0.0066, 9.5e-05, 3.1e-06, 0.0, 2e-08, per_prefill_iteration_s=0.012,
                     per_mixed_seq_s=0.0015, name="cpu-like-test")


def small_workload(prompts, outputs, arrivals, ttft=1.0, tpot=0.05, clients=None) -> Workload:
    n = len(prompts)
    return Workload(
        np.asarray(arrivals, dtype=float),
        np.asarray(prompts, dtype=np.int64),
        np.asarray(outputs, dtype=np.int64),
        np.full(n, ttft),
        np.full(n, tpot),
        np.zeros(n, dtype=np.int64) if clients is None else np.asarray(clients, dtype=np.int64),
    )


def write_azure_trace(path, rows):
    """rows: (seconds offset, prompt, output)."""
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for offset, prompt, output in rows:
        whole = int(offset)
        frac = int(round((offset - whole) * 1e7))
        minutes, seconds = divmod(whole, 60)
        lines.append(f"2023-11-16 18:{15 + minutes:02d}:{seconds:02d}.{frac:07d},{prompt},{output}")
    path.write_text("\n".join(lines) + "\n")
    return path
