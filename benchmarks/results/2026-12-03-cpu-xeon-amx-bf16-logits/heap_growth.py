"""The bench with each timed step also printing the size of the process's [heap] mapping and its VmRSS, before
and after the step (a diagnostic, run with ab.sh's environment):
    python heap_growth.py --config configs/bench_bloom.py --config.model.dtype=bfloat16 --steps 12 --warmup 3 \
        --noload_memory --workdir /tmp/bench/diag
"""
import sys

from xalign_jax import bench

def heap_bytes():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            return hi - lo
    return 0

original = bench.measured_step
def measured_step(step):
    h0, r0 = heap_bytes(), bench.memory_status()["rss"]
    out = original(step)
    h1, r1 = heap_bytes(), bench.memory_status()["rss"]
    print(f"DIAG step {out['seconds']:.3f}s faults {out['minor_faults']} heap {h0 / 2**30:.2f}->{h1 / 2**30:.2f} GiB "
          f"rss {r0 / 2**30:.2f}->{r1 / 2**30:.2f} GiB", flush=True)
    return out
bench.measured_step = measured_step
sys.argv = ["bench"] + sys.argv[1:]
bench.cli()
