"""The one JSON writer (sglang_fair.strict_json) and the committed results it wrote."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sglang_fair import strict_json

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmark" / "results"


def strict_load(text: str):
    """Python's json reads NaN/Infinity unless told not to: any such constant fails here."""
    def refuse(constant):
        raise ValueError(f"non-JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def committed_results() -> list[Path]:
    return sorted(RESULTS.rglob("*.json"))


def test_results_folder_has_files():
    assert len(committed_results()) >= 5


@pytest.mark.parametrize("path", committed_results(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_results_are_strict_json(path):
    with open(path) as handle:
        json.load(handle, parse_constant=lambda c: 1 / 0)


def test_nonfinite_numbers_become_null_with_their_reason_beside():
    data = {"rate_rps": 2.5, "saturation_rps": math.nan, "ratio": math.inf, "floor": -math.inf,
            "per_seed": [1.0, math.inf, [math.nan, 2.0]], "nested": {"p99_s": math.nan}, "none": None}
    out = strict_load(strict_json.dumps(data))
    assert out == {
        "rate_rps": 2.5,
        "saturation_rps": None, "saturation_rps_nonfinite": "NaN",
        "ratio": None, "ratio_nonfinite": "Infinity",
        "floor": None, "floor_nonfinite": "-Infinity",
        "per_seed": [1.0, None, [None, 2.0]], "per_seed_nonfinite": {"1": "Infinity", "2/0": "NaN"},
        "nested": {"p99_s": None, "p99_s_nonfinite": "NaN"},
        "none": None,
    }
    assert list(out)[:3] == ["rate_rps", "saturation_rps", "saturation_rps_nonfinite"]  # reason right after


def test_numpy_tuples_and_keys_convert_like_json():
    data = {"a": np.float64("nan"), "b": np.float32(0.5), "c": np.arange(3), "d": (1, np.int64(2)), 7: True}
    assert strict_load(strict_json.dumps(data)) == {
        "a": None, "a_nonfinite": "NaN", "b": 0.5, "c": [0, 1, 2], "d": [1, 2], "7": True}


def test_what_cannot_be_written_strictly_is_an_error():
    with pytest.raises(ValueError, match="outside any object key"):
        strict_json.dumps([1.0, math.nan])
    with pytest.raises(ValueError, match="outside any object key"):
        strict_json.dumps(math.inf)
    with pytest.raises(ValueError, match="is taken"):
        strict_json.dumps({"x": math.nan, "x_nonfinite": "mine"})
    with pytest.raises(TypeError, match="is not JSON"):
        strict_json.dumps({"x": object()})
    assert strict_load(strict_json.dumps({"x": Path("/a")}, other=str)) == {"x": "/a"}


def test_write_leaves_no_partial_file_on_error(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(TypeError):
        strict_json.write(path, {"x": object()})
    assert not path.exists()
    strict_json.write(path, {"x": [1.5]}, indent=2)
    assert path.read_text() == '{\n  "x": [\n    1.5\n  ]\n}\n'


def test_sim_cli_writes_nonfinite_results_strictly(tmp_path, monkeypatch, capsys):
    """``sim capacity --json`` goes through the writer: a zero saturation bound (share NaN) and a
    search with no finished request (p99 NaN) come out as null + reason, and the file is strict."""
    from sglang_fair.sim import cli

    def search(variant, *args, **kwargs):
        return {"policy": variant.policy, "router": variant.router, "replicas": variant.replicas,
                "options": variant.options, "admission_control": variant.admission_control,
                "capacity_rps": 0.0, "ttft_p99_s": math.nan, "tpot_p99_s": math.nan, "tbt_p99_s": math.nan,
                "ttft_ratio_p99": math.nan, "ttft_ratio_max": math.nan, "ttft_over_bound": math.nan, "curve": []}

    monkeypatch.setattr(cli, "saturation_rps", lambda *args, **kwargs: 0.0)
    monkeypatch.setattr(cli, "search_capacity", search)
    trace = tmp_path / "azure.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:00.0000000,100,10\n"
                     "2023-11-16 18:15:01.0000000,200,20\n")
    out = tmp_path / "cap.json"
    assert cli.main(["capacity", "--trace", str(trace), "--policies", "fairbatching", "--quiet", "--jobs", "1",
                     "--json", str(out)]) == 0
    result = strict_load(out.read_text())["results"][0]
    assert result["share_of_saturation"] is None and result["share_of_saturation_nonfinite"] == "NaN"
    assert result["ttft_p99_s"] is None and result["ttft_p99_s_nonfinite"] == "NaN"
    assert not hasattr(cli, "_write_json")  # no cleaner of its own
