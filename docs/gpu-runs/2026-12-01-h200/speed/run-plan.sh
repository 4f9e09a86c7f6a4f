#!/usr/bin/env bash
# Planner: old = 4ac4a08, before = main b252a73, after3 = this branch; alternated; per run, the
# fastest and the median sample (criterion's sample.json: time per iteration of each sample).
cd "$(dirname "$0")"
export CRITERION_HOME=/tmp/crit
for i in 1 2 3; do for b in old before after3; do
  rm -rf /tmp/crit
  ./plan-$b --bench --noplot --measurement-time 3 --sample-size 40 >/dev/null 2>&1
  python3 - "$b" "$i" <<'PY' >> "$OUT/plan-samples.txt"
import json, glob, sys, statistics
for f in sorted(glob.glob('/tmp/crit/plan/*/*/new/sample.json')):
    s = json.load(open(f)); per = [t / n / 1000 for t, n in zip(s['times'], s['iters'])]
    case = '/'.join(f.split('/')[4:6])
    print(f"{sys.argv[1]} {sys.argv[2]} {case}: min {min(per):.2f} us, median {statistics.median(per):.2f} us")
PY
done; done
cat "$OUT/plan-samples.txt"
