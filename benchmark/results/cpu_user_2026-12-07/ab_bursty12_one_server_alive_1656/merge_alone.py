"""Pool the four one-server rounds of this folder (stock, FairBatching, FairBatching, stock) by seed
with benchmark/cpu_ab_pool.py, and print each run's scheduler CPU seconds."""
import gzip, json, os, sys
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', '..', '..'))
import cpu_ab_pool as P
def load(n, t): return json.load(gzip.open(f'{HERE}/{n}_{t}/results.json.gz', 'rt'))
rounds = []
for t in 'ab':
    s, f = load('stock', t), load('fair', t)
    rs = {r['seed']: r['stock'] for r in s['arrivals']['bursty']['runs']}
    rf = {r['seed']: r['fair'] for r in f['arrivals']['bursty']['runs']}
    rep = dict(s); rep['servers'] = {**s['servers'], **f['servers']}
    rep['arrivals'] = {'bursty': {**s['arrivals']['bursty'], 'runs': [{'seed': k, 'stock': rs[k], 'fair': rf[k]} for k in rs]}}
    rounds.append((f'alone_{t}', rep))
    for n, r in (('stock', s), ('fair', f)):
        print(t, n, r['date_utc'], r['load_start']['uptime'][-30:], [round(x[n]['slo_attainment'], 2) for x in r['arrivals']['bursty']['runs']],
              {k: round(sum(x[n]['cpu_s'].get(k, 0) for x in r['arrivals']['bursty']['runs']), 1) for k in ('sglang::scheduler', 'http+tokenizer')},
              round(sum(x[n]['duration_s'] for x in r['arrivals']['bursty']['runs']), 1))
res = P.pool(rounds, 'bursty', 'stock', 'fair', {})
print(P.render(res, 'stock', 'fair', 'bursty'))

