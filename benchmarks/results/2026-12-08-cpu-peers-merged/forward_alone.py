import time, torch, statistics, sys
import carafe_cupy
from carafe_cupy._cpu import pages
torch.set_num_threads(2)
f = torch.randn(2,256,52,84); m = torch.randn(2,25,104,168)
orig = pages.first_touch_ranges
def run(label):
    ts=[]
    for _ in range(15):
        s=time.perf_counter(); carafe_cupy.carafe(f,m,5,1,2); ts.append((time.perf_counter()-s)*1e3)
    print(label, "min %.1f med %.1f max %.1f" % (min(ts), statistics.median(ts), max(ts)))
with torch.no_grad():
    carafe_cupy.carafe(f,m,5,1,2)
    for r in range(2):
        pages.first_touch_ranges = orig; run("touch  ")
        pages.first_touch_ranges = lambda t, p: []; run("notouch")
