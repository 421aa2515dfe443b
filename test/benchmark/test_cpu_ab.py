"""Pure parts of benchmark/cpu_ab.py (no server): server specs, the summary over seeds, the report."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmark"))
import cpu_ab as ab  # noqa: E402


def test_a_server_spec_is_a_name_an_optional_checkout_and_flags_with_the_slos_filled_in():
    name, path, flags = ab.parse_server("fair=--batch-policy fairbatching --fair-ttft-slo {ttft} --fair-tpot-slo {tpot}",
                                        0.136, 0.017)
    assert (name, path) == ("fair", None)
    assert flags == ["--batch-policy", "fairbatching", "--fair-ttft-slo", "0.136", "--fair-tpot-slo", "0.017"]
    name, path, flags = ab.parse_server("variant@/work/wt/python=--batch-policy fairbatching --fair-tpot-slo 0.02",
                                        0.1, 0.01)
    assert (name, path, flags[-1]) == ("variant", "/work/wt/python", "0.02")
    for bad in ("no flags", "=--batch-policy sglang", "a/b=--x"):
        with pytest.raises(ValueError, match="--server"):
            ab.parse_server(bad, 0.1, 0.01)


def test_default_servers_are_stock_and_the_readme_command():
    args = ab.parse_args(["--rate", "12", "--ttft-slo", "0.136", "--tpot-slo", "0.017"])
    assert [s[0] for s in args.servers] == ["stock", "fair"]
    assert args.servers[1][2] == ["--batch-policy", "fairbatching", "--fair-ttft-slo", "0.136", "--fair-tpot-slo", "0.017"]
    assert args.arrivals == ["poisson", "bursty"] and args.seeds == list(range(8))


@pytest.mark.parametrize("argv", [
    ["--rate", "0", "--ttft-slo", "0.1", "--tpot-slo", "0.01"],
    ["--rate", "5", "--ttft-slo", "0.1", "--tpot-slo", "0.01", "--arrivals", "steady"],
    ["--rate", "5", "--ttft-slo", "0.1", "--tpot-slo", "0.01", "--server", "a=--x", "--server", "a=--y"],
    ["--rate", "5", "--ttft-slo", "0.1", "--tpot-slo", "0.01", "--server", "nameless"],
    ["--rate", "5", "--ttft-slo", "0.1", "--tpot-slo", "0.01", "--server-env", "nobody:OMP_WAIT_POLICY=passive"],
    ["--rate", "5", "--ttft-slo", "0.1", "--tpot-slo", "0.01", "--server-env", "fair:OMP_WAIT_POLICY"],
    ["--rate", "5", "--ttft-slo", "0.1", "--tpot-slo", "0.01", "--server-env", "fair=OMP_WAIT_POLICY=passive"],
])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        ab.parse_args(argv)


def test_an_environment_variable_is_set_for_the_named_server_only():
    args = ab.parse_args(["--rate", "12", "--ttft-slo", "0.136", "--tpot-slo", "0.017",
                          "--server-env", "fair:OMP_WAIT_POLICY=passive", "--server-env", "fair:A=b=c"])
    assert args.server_env == {"fair": {"OMP_WAIT_POLICY": "passive", "A": "b=c"}}
    assert ab.parse_args(["--rate", "12", "--ttft-slo", "0.1", "--tpot-slo", "0.01"]).server_env == {}


def _run(attainment, ttft_p99=0.2, itl_p99=0.03, tpot_p99=0.02):
    return {"slo_attainment": attainment, "ttft_attainment": min(1.0, attainment + 0.05),
            "tpot_attainment": min(1.0, attainment + 0.02), "ttft_p99_s": ttft_p99, "itl_p99_s": itl_p99,
            "tpot_p99_s": tpot_p99}


def test_the_summary_takes_medians_over_seeds_and_counts_collapses_against_the_first_server():
    runs = [{"seed": 0, "stock": _run(0.95), "fair": _run(0.40, ttft_p99=0.9)},
            {"seed": 1, "stock": _run(0.70), "fair": _run(0.30, itl_p99=math.nan)},  # stock < 90%: no collapse
            {"seed": 2, "stock": _run(0.99), "fair": _run(0.97, ttft_p99=0.1)}]
    summary = ab.summarize(["stock", "fair"], runs)
    assert summary["fair"]["attainment_per_seed"] == [0.40, 0.30, 0.97]
    assert summary["fair"]["median"]["slo_attainment"] == 0.40
    assert summary["fair"]["median"]["ttft_p99_s"] == 0.2
    assert summary["fair"]["median"]["itl_p99_s"] == pytest.approx(0.03)  # the NaN left out
    assert summary["fair"]["collapses"] == 1 and summary["stock"]["collapses"] == 0
    report = {"date_utc": "d", "load_start": {"uptime": "u0"}, "load_end": {"uptime": "u1"}, "model": "tiny",
              "requests": 240, "ttft_slo_s": 0.136, "tpot_slo_s": 0.017,
              "servers": {"stock": {"command": "python -m sglang_fair.launch_server --batch-policy sglang"},
                          "fair": {"command": "python -m sglang_fair.launch_server --batch-policy fairbatching"}},
              "arrivals": {"bursty": {"rate_rps": 12.0, "seeds": [0, 1, 2], "summary": summary}}}
    text = ab.render(report)
    assert "| fair | 40, 30, 97% | **40%** | 45 / 42% | 0.20 | 30 | 20 | 1 |" in text
    assert "bursty at 12.0 req/s, seeds 0, 1, 2" in text


def test_misses_by_output_length_come_from_the_per_request_rows():
    columns = ["index", "prompt_tokens", "output_tokens", "ttft_s", "tpot_s", "ttft_met", "tpot_met"]

    def run(rows):
        return {**_run(0.9), "requests_detail": {"columns": columns, "rows": rows}}

    runs = [{"seed": 0, "stock": run([[0, 10, 3, 0.1, 0.01, True, True], [1, 10, 40, 0.2, 0.01, False, True]]),
             "fair": run([[0, 10, 3, 0.1, 0.03, True, False], [1, 10, 40, 0.1, 0.01, True, True]])},
            {"seed": 1, "stock": run([[0, 10, 100, 0.1, 0.01, True, True]]),
             "fair": run([[0, 10, 100, 0.1, 0.02, True, False]])}]
    misses = ab.misses_by_output(["stock", "fair"], runs)
    assert misses["fair"]["1-4"] == {"requests": 1, "ttft_missed": 0, "tpot_missed_only": 1}
    assert misses["stock"]["17-64"] == {"requests": 1, "ttft_missed": 1, "tpot_missed_only": 0}
    assert misses["fair"]["> 64"] == {"requests": 1, "ttft_missed": 0, "tpot_missed_only": 1}
    assert misses["stock"]["5-16"]["requests"] == 0
    # Without per-request rows there is no table.
    assert ab.misses_by_output(["stock"], [{"seed": 0, "stock": _run(0.9)}]) == {}
    report = {"date_utc": "d", "load_start": {"uptime": "u0"}, "load_end": {"uptime": "u1"}, "model": "tiny",
              "requests": 2, "ttft_slo_s": 0.136, "tpot_slo_s": 0.017, "servers": {},
              "arrivals": {"poisson": {"rate_rps": 16.0, "seeds": [0, 1],
                                       "summary": ab.summarize(["stock", "fair"], runs), "misses_by_output": misses}}}
    text = ab.render(report)
    assert "| 1-4 | 1, 0, 0 | 1, 0, 1 |" in text
    assert "| 17-64 | 1, 1, 0 | 1, 0, 0 |" in text
    assert "| > 64 | 1, 0, 0 | 1, 0, 1 |" in text


def test_each_server_names_the_commit_and_the_uncommitted_edits_it_runs(tmp_path):
    """A server without @PATH runs this checkout's working tree: an edit there (a variant being
    tried) would silently change the reference server too, so the report names it."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    package = tmp_path / "python" / "pkg"
    package.mkdir(parents=True)
    (package / "rule.py").write_text("X = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    clean = ab.code_identity(str(tmp_path / "python"))
    assert clean["commit"] and clean["modified"] == []
    (package / "rule.py").write_text("X = 2\n")
    (tmp_path / "python" / "notes.txt").write_text("not code\n")
    edited = ab.code_identity(str(tmp_path / "python"))
    assert edited == {"commit": clean["commit"], "modified": ["python/pkg/rule.py"]}
    assert ab.code_identity(str(tmp_path / "elsewhere")) == {"commit": None, "modified": []}
    report = {"date_utc": "d", "load_start": {"uptime": "u0"}, "load_end": {"uptime": "u1"}, "model": "tiny",
              "requests": 2, "ttft_slo_s": 0.136, "tpot_slo_s": 0.017, "arrivals": {},
              "servers": {"fair": {"command": "python -m sglang_fair.launch_server", "code": edited}}}
    assert f"(code: {clean['commit']}, with uncommitted edits to python/pkg/rule.py)" in ab.render(report)


def test_the_schedulers_own_verdicts_are_set_beside_the_clients():
    """A run's server-side counts are the difference of the counters around it; a server that
    counts nothing (stock batching) or could not be read has none, and is left out of the table."""
    before = {"finished": 10, "met_ttft": 9, "met_tpot": 10, "met_both": 9}
    after = {"finished": 250, "met_ttft": 229, "met_tpot": 245, "met_both": 222}
    run = ab.server_run_slo(before, after)
    assert run == {"finished": 240, "met_ttft": 220, "met_tpot": 235, "met_both": 213}
    assert ab.server_run_slo(before, dict(before)) is None and ab.server_run_slo(None, after) is None
    fair = {**_run(0.85), "requests": 240, "ttft_attainment": 0.875, "server_slo": run}
    stock = {**_run(0.9), "requests": 240, "server_slo": None}
    verdicts = ab.server_vs_client(["stock", "fair"], [{"seed": 0, "stock": stock, "fair": fair}])
    assert list(verdicts) == ["fair"]
    assert verdicts["fair"] == {"runs": 1, "server_finished": 240, "server_met_ttft": 220, "server_met_both": 213,
                                "client_requests": 240, "client_met_ttft": 210, "client_met_both": 204}
    assert ab.server_slo("http://127.0.0.1:9") is None  # nothing listens there
    rank = {"batch_policy": "fairbatching", "runtime": {"slo": {**after, "aborted": 0}}}
    assert ab.slo_counters({"dp_ranks": [rank, rank]}) == {key: 2 * after[key] for key in ab.SERVER_COUNTERS}
    assert ab.slo_counters({"dp_ranks": [{}]}) is None and ab.slo_counters({"error": "down"}) is None
    report = {"date_utc": "d", "load_start": {"uptime": "u0"}, "load_end": {"uptime": "u1"}, "model": "tiny",
              "requests": 240, "ttft_slo_s": 0.136, "tpot_slo_s": 0.017, "servers": {},
              "arrivals": {"bursty": {"rate_rps": 12.0, "seeds": [0],
                                      "summary": ab.summarize(["stock", "fair"], [{"seed": 0, "stock": stock,
                                                                                   "fair": fair}]),
                                      "server_vs_client": verdicts}}}
    assert "| fair | 1 | 240 | 220 / 210 | 213 / 204 |" in ab.render(report)


def test_the_ttft_legs_and_the_misses_lost_outside_the_server():
    """With --enable-metrics stamps: per server, each leg's median, and the client's TTFT misses
    that the HTTP server met by its own clock."""
    columns = ["index", "prompt_tokens", "output_tokens", "ttft_s", "tpot_s", "ttft_met", "tpot_met",
               "to_server_s", "server_ttft_s"]

    def run(rows):
        return {**_run(0.9), "requests_detail": {"columns": columns, "rows": rows}}

    runs = [{"seed": 0,
             # met; missed though the server met it (lost outside); missed in the server too
             "fair": run([[0, 10, 3, 0.050, 0.01, True, True, 0.002, 0.040],
                          [1, 10, 3, 0.150, 0.01, False, True, 0.020, 0.120],
                          [2, 10, 3, 0.300, 0.01, False, True, 0.004, 0.290],
                          [3, 10, 3, float("nan"), float("nan"), False, False, float("nan"), float("nan")]]),
             "stock": run([[0, 10, 3, 0.050, 0.01, True, True, float("nan"), float("nan")]])}]
    path = ab.ttft_path(["fair", "stock"], runs, ttft_slo_s=0.136)
    assert list(path) == ["fair"]  # stock ran without the stamps: no row
    fair = path["fair"]
    assert fair["requests"] == 3 and fair["ttft_missed"] == 2 and fair["ttft_missed_server_met"] == 1
    assert fair["to_server_s_p50"] == pytest.approx(0.004)
    assert fair["server_ttft_s_p50"] == pytest.approx(0.120)
    assert fair["back_to_client_s_p50"] == pytest.approx(0.008)
    # Rows written before the stamps existed give no table either.
    old = [{"seed": 0, "fair": {**_run(0.9), "requests_detail": {"columns": columns[:7], "rows": []}}}]
    assert ab.ttft_path(["fair"], old, 0.136) == {}


def test_cpu_seconds_by_process_add_up_over_runs_and_are_rendered():
    readings = [{"http+tokenizer": 1.0, "sglang::scheduler": 10.0}, {"http+tokenizer": 1.5, "sglang::scheduler": 12.0,
                                                                     "sglang::detokenizer": 0.5}]
    assert ab.run_cpu_seconds(*readings) == {"http+tokenizer": 0.5, "sglang::scheduler": 2.0, "sglang::detokenizer": 0.5}
    runs = [{"seed": s, "fair": {**_run(0.9), "duration_s": 10.0, "cpu_s": {"sglang::scheduler": 11.0 + s}}}
            for s in (0, 1)]
    cpu = ab.cpu_by_process(["fair"], runs)
    assert cpu == {"fair": {"wall_s": 20.0, "cpu_s": {"sglang::scheduler": 23.0}}}
    report = {"date_utc": "d", "load_start": {"uptime": "u0"}, "load_end": {"uptime": "u1"}, "model": "tiny",
              "requests": 2, "ttft_slo_s": 0.136, "tpot_slo_s": 0.017, "servers": {},
              "arrivals": {"bursty": {"rate_rps": 12.0, "seeds": [0, 1], "summary": ab.summarize(["fair"], runs),
                                      "cpu_s": cpu}}}
    assert "| fair | 20.0 | 23.0 |" in ab.render(report)
    # A process that is gone (a dead server) reads as none, not as an error.
    assert ab.process_cpu_seconds(2**22 + 12345) == {}
