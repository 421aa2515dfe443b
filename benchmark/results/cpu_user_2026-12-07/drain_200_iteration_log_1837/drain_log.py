"""Ad hoc (2026-12-07 18:37 UTC): one stock and one FairBatching server (the latter writing its iteration
log), the drain benchmark's 200-request burst twice, interleaved.  Run from the repository root:
.venv/bin/python benchmark/results/cpu_user_2026-12-07/drain_200_iteration_log_1837/drain_log.py OUT_DIR"""
import os, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2].parent))
import cpu_user_bench as b, load_client
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True); prompts, outputs = load_client.load_trace_lengths(str(load_client.default_trace_path()))
model = b.model_shape("tiny", out)
env = {**os.environ, "SGLANG_FAIR_CALIBRATION_CACHE": str(out / "calibration-cache")}
ttft, tpot = 0.149, 0.0186
stock = b.Server("sglang", ["--batch-policy", "sglang", "--log-level", "info"])
fair = b.Server("fair", ["--batch-policy", "fairbatching", "--fair-ttft-slo", str(ttft), "--fair-tpot-slo", str(tpot),
                         "--fair-iteration-log", str(out / "iter_fair.jsonl")])
started = [stock, fair]
try:
    for s in started: b.launch(s, model, out, env)
    for s in started: b.wait_ready(s, 600)
    b.warm_up(started, dict(prompts=prompts, outputs=outputs, length_scale=0.25, ttft_slo_s=ttft, tpot_slo_s=tpot, rate_rps=1.0), model.vocab_size)
    probe = dict(prompts=prompts, outputs=outputs, num_requests=200, rate_rps=1.0, seed=7, length_scale=0.25, ttft_slo_s=ttft, tpot_slo_s=tpot)
    specs = [load_client.RequestSpec(s.index, 0.0, s.prompt_tokens, s.output_tokens, ttft, tpot) for s in load_client.make_workload(**probe)]
    print("prompt tokens", sum(s.prompt_tokens for s in specs), "output tokens", sum(s.output_tokens for s in specs))
    for r in range(2):
        for s in started:
            res = b.drain_once(s, specs, 7, model.vocab_size, 300)
            print(r, s.name, res["drain_s"], res["served"], flush=True)
finally:
    for s in started: b.stop(s)
