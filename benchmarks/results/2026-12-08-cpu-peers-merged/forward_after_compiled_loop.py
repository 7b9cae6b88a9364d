import time, torch, statistics, sys
sys.path.insert(0, "benchmarks")
import carafe_cupy
from cpu_peers import carafe_shift_upsampled
from carafe_cupy._cpu import pages
torch.set_num_threads(2)
f = torch.randn(2,256,52,84); m = torch.randn(2,25,104,168)
shift = torch.compile(carafe_shift_upsampled, dynamic=False)
orig = pages.first_touch_ranges
with torch.no_grad():
    shift(f,m,5,1,2); carafe_cupy.carafe(f,m,5,1,2)
    res = {"touch": [], "notouch": [], "gap50ms": []}
    for r in range(9):
        for label in res:
            pages.first_touch_ranges = orig if label != "notouch" else (lambda t, p: [])
            shift(f,m,5,1,2)
            if label == "gap50ms": time.sleep(0.05)
            s=time.perf_counter(); carafe_cupy.carafe(f,m,5,1,2); res[label].append((time.perf_counter()-s)*1e3)
    for k, ts in res.items():
        print(k, "min %.1f med %.1f max %.1f" % (min(ts), statistics.median(ts), max(ts)))
