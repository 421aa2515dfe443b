"""The settings sglang_fair adds to SGLang's, and how they reach the scheduler process.

SGLang starts its scheduler with ``multiprocessing`` *spawn*, so nothing set in the launcher's
memory survives; environment variables do.  The launcher stores a :class:`FairConfig` as JSON in
``SGLANG_FAIR_CONFIG`` and the scheduler process reads it back with :meth:`FairConfig.from_env`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

__all__ = ["ENV_VAR", "FairConfig"]

#: Environment variable carrying the JSON form of a :class:`FairConfig`.
ENV_VAR = "SGLANG_FAIR_CONFIG"


@dataclass
class FairConfig:
    """sglang_fair's own flags, one field each (see ``python -m sglang_fair.launch_server --help``)."""

    batch_policy: str = "sglang"  # --batch-policy; "sglang" leaves SGLang's batching untouched
    ttft_slo_s: float = 1.0  # --fair-ttft-slo: default time-to-first-token SLO, seconds
    tpot_slo_s: float = 0.1  # --fair-tpot-slo: default time-per-output-token SLO, seconds
    cost_model: str | None = None  # --cost-model: preset name or JSON file; None = runtime picks
    token_budget: int = 512  # --fair-token-budget: per-iteration tokens for sarathi/slai/vtc
    admission_control: bool = False  # --fair-admission-control
    client_fairness: bool = False  # --fair-client-fairness
    calibrate: bool = True  # off with --fair-no-calibration: time the model at start-up
    iteration_log: str | None = None  # --fair-iteration-log: every measured iteration, JSON lines
    policy_options: dict = field(default_factory=dict)  # --fair-policy-option KEY=VALUE

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def to_env(self, environ: dict | None = None) -> None:
        """Publish this config for processes started after this call (``os.environ`` by default)."""
        (os.environ if environ is None else environ)[ENV_VAR] = self.to_json()

    @classmethod
    def from_env(cls, environ: dict | None = None) -> FairConfig:
        """The config the launcher published, or the defaults when there is none."""
        text = (os.environ if environ is None else environ).get(ENV_VAR)
        if not text:
            return cls()
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{ENV_VAR}: unknown field(s) {', '.join(unknown)}")
        return cls(**data)
