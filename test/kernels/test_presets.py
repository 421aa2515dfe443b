"""Shipped cost-model presets, their provenance, and how every entry point rejects bad ones."""

import json
import math
import subprocess

import pytest

from sglang_fair.policy.cost_model import (
    KERNEL_TERMS,
    CostModel,
    CostModelError,
    load_cost_model,
    preset_names,
)

SHAPE_CLASSES = ("decode-only", "mixed", "prefill-only")
VIDUR_PRESETS = ("a100-llama2-7b", "h100-llama2-7b", "a100-llama3-8b")


def test_expected_presets_are_shipped():
    assert {*VIDUR_PRESETS, "cpu-tiny"} <= set(preset_names())


@pytest.mark.parametrize("name", [*VIDUR_PRESETS, "cpu-tiny"])
def test_preset_loads_by_name_with_fit_error_per_class(name):
    model = load_cost_model(name)
    assert model.name == name
    info = model.info
    assert info["date"] and info["device"] and info["source"]
    # Every term a kernel profile identifies (cpu-tiny predates the chunk x prefix term).
    assert {"fixed", "new_tokens", "sum_context"} <= set(info["terms"]) <= set(KERNEL_TERMS)
    if name in VIDUR_PRESETS:
        assert set(info["terms"]) == set(KERNEL_TERMS)
    for shape_class in ("all",) + SHAPE_CLASSES:
        stats = info["fit_error"][shape_class]
        assert 0 <= stats["mape"] <= stats["max_ape"] and stats["samples"] > 0
    assert info["mape"] == info["fit_error"]["all"]["mape"]
    # Coefficients a scheduler can use: time grows with tokens, context and chunk size.
    assert model.fixed_s > 0 and model.per_new_token_s > 0 and model.per_context_token_s > 0
    assert model.per_chunk_sq_s >= 0


@pytest.mark.parametrize("name", VIDUR_PRESETS)
def test_vidur_presets_say_what_was_measured_and_assumed(name):
    info = load_cost_model(name).info
    assert info["attribution"] == "microsoft/vidur, MIT, (c) Microsoft"
    assert info["measured"] and info["assumed"]
    assert info["fit_error"]["all"]["mape"] < 0.06  # docs/cost-model.md: 5.0% (A100), 4.0% (H100)
    assert info["four_term_fit"]["fit_error"]["all"]["mape"] > info["fit_error"]["all"]["mape"]
    assert info["holdout_error"]["all"]["mape"] < 0.08
    if name.startswith("h100"):
        assert any("bandwidth" in line for line in info["assumed"])
    if "llama3" in name:  # attention derived for grouped-query attention, and said so
        assert any("grouped-query" in line for line in info["assumed"])


@pytest.mark.parametrize("name,kv_tokens", [("a100-llama2-7b", 111_000), ("a100-llama3-8b", 425_000)])
def test_vidur_presets_carry_the_kv_pool_of_a_default_server(name, kv_tokens):
    """An 80 GB GPU under SGLang's default memory fraction: ~4x the KV tokens for GQA Llama-3-8B."""
    engine = load_cost_model(name).info["engine"]
    assert engine["kv_capacity_tokens"] == pytest.approx(kv_tokens, rel=0.01)
    assert engine["max_running_requests"] == 256 and engine["max_prefill_tokens"] == 8192
    assert "mem" in engine["derivation"] and "weights" in engine["derivation"]


def test_llama3_preset_is_cheaper_per_context_token_than_llama2():
    """GQA reads a quarter of the KV per decode step; the MLP is wider, so new tokens cost more."""
    llama2, llama3 = load_cost_model("a100-llama2-7b"), load_cost_model("a100-llama3-8b")
    assert llama3.per_context_token_s == pytest.approx(llama2.per_context_token_s / 4, rel=0.2)
    assert llama3.per_new_token_s > llama2.per_new_token_s


def test_presets_predict_plausible_llama2_7b_times():
    a100, h100 = load_cost_model("a100-llama2-7b"), load_cost_model("h100-llama2-7b")
    for model in (a100, h100):
        one_decode = model.predict(1, 1024, 1)
        assert 0.004 < one_decode < 0.02  # a 7B decode step is milliseconds, not micro- or seconds
        assert model.predict(64, 64 * 1024, 64) > one_decode
        assert model.predict(2048, 2048, 1, 2048**2) > model.predict(512, 512, 1, 512**2)
    # H100's linear layers are ~3x faster: a big prefill must be predicted clearly faster.
    assert h100.predict(4096, 4096, 1, 4096**2) < 0.6 * a100.predict(4096, 4096, 1, 4096**2)


def test_vidur_presets_regenerate_from_calibration(kernels_pkg, calibration_dir):
    generator = kernels_pkg("fit_vidur_presets")
    presets = generator.build_presets(calibration_dir)
    for name in VIDUR_PRESETS:
        fitted, four_term, rows = presets[name]
        shipped = load_cost_model(name)
        assert fitted.coefficients() == pytest.approx(shipped.coefficients(), rel=1e-6, abs=1e-15)
        assert {row.shape_class for row in rows} == set(SHAPE_CLASSES)
    # The chunk^2 term is what makes the A100 fit good (docs/cost-model.md: 8.2% -> 5.0% MAPE).
    a100_four = presets["a100-llama2-7b"][1].info["fit_error"]["all"]["mape"]
    a100_five = presets["a100-llama2-7b"][0].info["fit_error"]["all"]["mape"]
    assert 0.05 < a100_four < 0.11 and a100_five < 0.06


def test_attention_model_fits_the_measured_rows(kernels_pkg, calibration_dir):
    generator = kernels_pkg("fit_vidur_presets")
    attention = generator.AttentionModel(calibration_dir / "vidur_a100_llama2_7b_attention_rows.csv")
    assert (attention.decode_coef >= 0).all() and (attention.prefill_coef >= 0).all()
    assert attention.decode_mape < 0.1 and attention.prefill_mape < 0.1
    assert attention.decode_ms((1728,) * 64) == pytest.approx(1.017, rel=0.15)  # a measured row
    assert attention.prefill_ms(1920, 1024) == pytest.approx(0.899, rel=0.15)


# --- rejection: one line, naming what is wrong --------------------------------------------------
def _one_line(message: str) -> str:
    assert message and "\n" not in message.strip()
    return message


def test_unknown_preset_is_one_line_error():
    with pytest.raises(CostModelError) as err:
        load_cost_model("no-such-preset")
    message = _one_line(str(err.value))
    assert "no-such-preset" in message and "a100-llama2-7b" in message


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2, 3]", "JSON object"),
        ('{"fixed_s": 0.001}', "missing field"),
        ('{"fixed_s": 0.001, "per_new_token_s": "fast", "per_context_token_s": 1e-9}', "finite number"),
        ('{"fixed_s": NaN, "per_new_token_s": 1e-5, "per_context_token_s": 1e-9}', "finite number"),
        ('{"fixed_s": 0.001, "per_new_token_s": true, "per_context_token_s": 1e-9}', "finite number"),
        ('{"fixed_s": 0.001, "per_new_token_s": -1e-5, "per_context_token_s": 0}', "must not all be"),
    ],
)
def test_malformed_file_is_one_line_error(tmp_path, content, fragment):
    path = tmp_path / "model.json"
    path.write_text(content)
    with pytest.raises(CostModelError) as err:
        load_cost_model(str(path))
    message = _one_line(str(err.value))
    assert fragment in message and str(path) in message


def test_saved_model_round_trips(tmp_path):
    model = CostModel(0.005, 5e-5, 3e-7, 1e-5, 1e-11, name="mine", info={"mape": 0.05})
    path = tmp_path / "mine.json"
    model.save(path)
    loaded = load_cost_model(str(path))
    assert loaded.coefficients().tolist() == model.coefficients().tolist()
    assert loaded.name == "mine" and loaded.info == {"mape": 0.05}


def test_simulator_accepts_preset_and_rejects_bad_cost_model(python_exe, tmp_path):
    pytest.importorskip("sglang_fair.sim.cli")
    trace = tmp_path / "trace.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:15:{i:02d}.0000000,{100 + i},{10 + i}\n" for i in range(20)))
    bad = tmp_path / "bad.json"
    bad.write_text("{")

    def sim(cost_model):
        return subprocess.run(
            [python_exe, "-m", "sglang_fair.sim", "run", "--trace", str(trace), "--num-requests", "10",
             "--rate", "1", "--quiet", "--cost-model", cost_model],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )

    for cost_model, fragment in (("no-such-preset", "unknown preset"), (str(bad), "not valid JSON")):
        result = sim(cost_model)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], result.stderr
    result = sim("h100-llama2-7b")
    assert result.returncode == 0, result.stderr[-2000:]


def test_runtime_flags_accept_preset_and_reject_bad_cost_model(tmp_path, capsys):
    launch = pytest.importorskip("sglang_fair.launch_server")
    config, rest = launch.parse_fair_args(["--cost-model", "h100-llama2-7b", "--model-path", "m"])
    assert config.cost_model == "h100-llama2-7b" and rest == ["--model-path", "m"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fixed_s": 0.001}))
    for cost_model in ("no-such-preset", str(bad)):
        with pytest.raises(SystemExit) as exit_info:
            launch.parse_fair_args(["--cost-model", cost_model])
        assert exit_info.value.code == 2
        err_lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err_lines) == 1 and "--cost-model" in err_lines[0]


def test_preset_json_is_plain_and_finite():
    from importlib import resources

    folder = resources.files("sglang_fair.policy") / "presets"
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text())
            for key in ("fixed_s", "per_new_token_s", "per_context_token_s", "per_seq_s", "per_chunk_sq_s"):
                assert math.isfinite(data[key]), (entry.name, key)
