import json,sys,statistics as st
def load(p):
    return {(x['path'],x['pattern'],x['block_bytes']):x['ratio'] for x in json.load(open(p))['points']}
base=sys.argv[1]
old=[load(f'{base}/old-{i}/bench.json') for i in (1,2)]
new=[load(f'{base}/new-{i}/bench.json') for i in (1,2)]
rows=[];devs=[]
for k in old[0]:
    if k not in new[0]: continue
    o=st.mean(d[k] for d in old if k in d); n=st.mean(d[k] for d in new if k in d)
    devs.append(n/o-1); rows.append((k,o,n,n/o-1))
for k,o,n,d in rows: print(f"{k[0]:36s} {k[1]:10s} {k[2]>>10:6d}K old {o:.3f} new {n:.3f} {d*100:+.1f}%")
print(f"points {len(rows)}; mean change {st.mean(devs)*100:+.2f}%; within 2%: {sum(abs(d)<=0.02 for d in devs)}; worst {min(devs)*100:+.1f}% best {max(devs)*100:+.1f}%")
