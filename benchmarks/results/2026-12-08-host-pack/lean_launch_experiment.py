import sys, statistics
sys.path.insert(0, "benchmarks")
import bench_host_cost as b
import torch
from carafe_cupy._runtime import launch as L
H, W = map(int, sys.argv[1].split("x"))
with b.driver_launch_stubbed() as rt:
    m = b.measurements(H, W, torch.float32, 2, 256)
    f = m["carafe forward+backward"]; g = m["bare Function forward+backward"]
    for _ in range(100): f(); g()
    current = L.PreparedCall.run
    def lean_run(self, pointers, device, stream):
        # what a bound per-step launch could cost: kernel pointer resolved once,
        # the driver called straight with the packed buffer
        pointers += (0,)
        get_device, set_device, launch_kernel = rt._driver
        get_device()
        for kernel, grid, block, layout, pick, shared_mem, module in self.steps:
            ptr = rt._launchable[(device, module, kernel)].ptr
            launch_kernel(ptr, *grid, *block, shared_mem, stream, layout.kernel_params(pick(pointers)), 0)
    r_cur, r_lean = [], []
    for _ in range(25):
        L.PreparedCall.run = current; a = b.per_call_us(f, 200); c = b.per_call_us(g, 200)
        L.PreparedCall.run = lean_run; d = b.per_call_us(f, 200)
        r_cur.append(a / c); r_lean.append(d / c)
    L.PreparedCall.run = current
    print(sys.argv[1], "current: median ratio", round(statistics.median(r_cur), 3), "lean launches:", round(statistics.median(r_lean), 3))
