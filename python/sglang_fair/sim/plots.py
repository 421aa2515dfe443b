"""PNG plots (matplotlib, Agg backend): attainment-vs-rate curves and TTFT CDFs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_attainment_curves", "plot_ttft_cdf"]


def _label(entry: dict) -> str:
    opts = ",".join(f"{k}={v}" for k, v in sorted(entry.get("options", {}).items())
                    if k not in ("default_ttft_slo_s",))
    base = entry["policy"] + ("+ac" if entry.get("admission_control") else "")
    if entry.get("replicas", 1) > 1:
        base += f"/{entry['router']}"
    return f"{base} ({opts})" if opts else base


def plot_attainment_curves(report: dict, path: str, title: str | None = None) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for entry in report["results"]:
        curve = entry["curve"]
        rates = [p["rate_rps"] for p in curve]
        att = [p["attainment"] for p in curve]
        ax.plot(rates, att, marker="o", ms=3, label=f"{_label(entry)}: {entry['capacity_rps']:.2f} rps")
    target = report.get("settings", {}).get("target", 0.9)
    ax.axhline(target, color="grey", lw=0.8, ls="--")
    if report.get("saturation_rps"):
        ax.axvline(report["saturation_rps"], color="black", lw=0.8, ls=":", label="saturation bound")
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel("SLO attainment (TTFT and mean TPOT)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "SLO attainment vs arrival rate")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_ttft_cdf(samples: dict[str, list[float]], path: str, title: str = "TTFT CDF",
                  slo_s: float | None = None) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for label, values in samples.items():
        values = np.sort(np.asarray(values, dtype=float))
        values = values[np.isfinite(values)]
        if len(values) == 0:
            continue
        ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=label)
    if slo_s:
        ax.axvline(slo_s, color="grey", lw=0.8, ls="--", label="TTFT SLO")
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
