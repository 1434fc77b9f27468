import subprocess, resource, sys, statistics
from pathlib import Path
from worker.media.sync_plan import plan_window, StretchSource, build_pair_decode_args, build_decode_args
C=Path("bench/cache")
rec=C/sys.argv[1]; dur=float(sys.argv[2])
w=plan_window(call_end=450.0, recording_duration=dur, connect_duration=450.0)
c=StretchSource(C/"connect-10min.wav",0,2,True,w.connect_start,w.connect_seconds)
r=StretchSource(rec,1,2,False,w.recording_seek,w.recording_seconds)
v={"one run":[build_pair_decode_args(c,r)],"two runs":[build_decode_args(s.path,s.stream_index,channels=s.channels,agent=s.agent,seek=s.seek,seconds=s.seconds) for s in (c,r)]}
res={}
for _ in range(10):
  for k,cmds in v.items():
    b=resource.getrusage(resource.RUSAGE_CHILDREN)
    for cmd in cmds: subprocess.run(cmd,capture_output=True,check=True)
    a=resource.getrusage(resource.RUSAGE_CHILDREN)
    res.setdefault(k,[]).append(a.ru_utime+a.ru_stime-b.ru_utime-b.ru_stime)
for k,x in res.items(): print(sys.argv[1], k, "median", round(statistics.median(x),3), "min", round(min(x),3))
