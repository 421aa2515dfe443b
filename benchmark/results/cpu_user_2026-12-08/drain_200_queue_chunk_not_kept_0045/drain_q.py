"""Ad hoc (2026-12-08): stock, FairBatching and FairBatching with queue_chunk_per_prompt=true, the drain
benchmark's 200-request burst, rounds interleaved.  Run from the repository root:
.venv/bin/python drain_q.py OUT_DIR ROUNDS"""
import os, sys, json, statistics
from pathlib import Path
sys.path.insert(0, str(Path.cwd() / "benchmark"))
import cpu_user_bench as b, load_client
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True); rounds = int(sys.argv[2])
prompts, outputs = load_client.load_trace_lengths(str(load_client.default_trace_path()))
model = b.model_shape("tiny", out)
env = {**os.environ, "SGLANG_FAIR_CALIBRATION_CACHE": str(out / "calibration-cache")}
ttft, tpot = 0.149, 0.0186
fair_args = ["--batch-policy", "fairbatching", "--fair-ttft-slo", str(ttft), "--fair-tpot-slo", str(tpot)]
stock = b.Server("sglang", ["--batch-policy", "sglang"])
fair = b.Server("fair", [*fair_args, "--fair-iteration-log", str(out / "iter_fair.jsonl")])
fairq = b.Server("fairq", [*fair_args, "--fair-policy-option", "queue_chunk_per_prompt=true",
                           "--fair-iteration-log", str(out / "iter_fairq.jsonl")])
started = [stock, fair, fairq]
res_all = {s.name: [] for s in started}
try:
    for s in started: b.launch(s, model, out, env)
    for s in started: b.wait_ready(s, 600)
    b.warm_up(started, dict(prompts=prompts, outputs=outputs, length_scale=0.25, ttft_slo_s=ttft, tpot_slo_s=tpot, rate_rps=1.0), model.vocab_size)
    probe = dict(prompts=prompts, outputs=outputs, num_requests=200, rate_rps=1.0, seed=7, length_scale=0.25, ttft_slo_s=ttft, tpot_slo_s=tpot)
    specs = [load_client.RequestSpec(s.index, 0.0, s.prompt_tokens, s.output_tokens, ttft, tpot) for s in load_client.make_workload(**probe)]
    print("prompt tokens", sum(s.prompt_tokens for s in specs), "output tokens", sum(s.output_tokens for s in specs), flush=True)
    for r in range(rounds):
        order = started if r % 2 == 0 else list(reversed(started))
        for s in order:
            res = b.drain_once(s, specs, 7, model.vocab_size, 300)
            res_all[s.name].append(res["drain_s"])
            print(r, s.name, round(res["drain_s"], 2), res["served"], flush=True)
finally:
    for s in started: b.stop(s)
    os.system("uptime")
for name, v in res_all.items():
    print(name, "median", round(statistics.median(v), 2) if v else None, [round(x, 2) for x in v])
ratio = lambda n: [f / s for f, s in zip(res_all[n], res_all["sglang"])]
print("fair/stock", [round(x, 2) for x in ratio("fair")], "fairq/stock", [round(x, 2) for x in ratio("fairq")])
print("fairq/fair", [round(q / f, 2) for q, f in zip(res_all["fairq"], res_all["fair"])])
json.dump(res_all, open(out / "drain_s.json", "w"))
