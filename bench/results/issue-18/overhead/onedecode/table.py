import sys,json,re,statistics as st
rows={}
for f in sys.argv[1:]:
    for l in open(f):
        m=re.match(r'\{"label":"(\w+)","case":"(\w+)","load":"([\d.]+)"',l)
        if m: head=m.groups(); continue
        if l.startswith('{"floor_cpu"'):
            d=json.JSONDecoder().raw_decode(l)[0]
            ps=d['processes']
            mp=sum(p['cpu'] for p in ps if p['what']=='merge')
            sync=sum(p['cpu'] for p in ps if 'sync decode' in (p['what'] or ''))
            rows.setdefault((head[1],head[0]),[]).append((d['cpu_ratio'],len(ps),d['merge_cpu']-mp,sync,d['floor_cpu'],d['merge_cpu'],mp))
print("| case | code | runs | processes | CPU ratio merge/floor (median; each) | merge pass/floor (median) | CPU outside the merge pass, s (median) | sync decode CPU, s (median) |")
print("|---|---|---|---|---|---|---|---|")
for (case,label),v in sorted(rows.items()):
    r=[x[0] for x in v]
    print(f"| {case} | {label} | {len(v)} | {sorted(set(x[1] for x in v))} | {st.median(r):.3f} ({', '.join(f'{x:.2f}' for x in r)}) | {st.median(x[6]/x[4] for x in v):.3f} | {st.median(x[2] for x in v):.2f} | {st.median(x[3] for x in v):.2f} |")
