import time, torch, statistics, sys
sys.path.insert(0, "benchmarks")
import carafe_cupy
from baselines import carafe_unfold_lowres as unfold
from carafe_cupy._cpu import pages
torch.set_num_threads(2)
f = torch.randn(2,256,52,84); m = torch.randn(2,25,104,168)
orig_t, orig_a = pages.first_touch_ranges, pages.advise_huge_pages
with torch.no_grad():
    carafe_cupy.carafe(f,m,5,1,2)
    res = {"touch+thp": [], "notouch+thp": [], "notouch-nothp": []}
    for r in range(7):
        for label in res:
            pages.first_touch_ranges = orig_t if label.startswith("touch") else (lambda t, p: [])
            pages.advise_huge_pages = orig_a if "+thp" in label else (lambda t: None)
            unfold(f,m,5,1,2)
            s=time.perf_counter(); carafe_cupy.carafe(f,m,5,1,2); res[label].append((time.perf_counter()-s)*1e3)
    for k, ts in res.items():
        print(k, "min %.1f med %.1f max %.1f" % (min(ts), statistics.median(ts), max(ts)))
