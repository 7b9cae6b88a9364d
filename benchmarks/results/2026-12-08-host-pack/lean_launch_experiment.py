"""How much of the host cost the launches' Python path holds: the eager path's
forward+backward over the bare Function, with its prepared calls as they are and with
the least a launch can be (the kernel looked up once, the packed buffer straight to
the bench's stubbed driver, no ``launch`` or runtime frames). An experiment, not a
launcher: run from the repository root,

    python benchmarks/results/2026-12-08-host-pack/lean_launch_experiment.py 13x21
"""

from __future__ import annotations

import statistics
import sys

sys.path.insert(0, "benchmarks")

import bench_host_cost as bench  # noqa: E402
import torch  # noqa: E402

from carafe_cupy._runtime import launch as _launch  # noqa: E402


def main(level: str) -> None:
    height, width = map(int, level.split("x"))
    with bench.driver_launch_stubbed() as runtime:
        timed = bench.measurements(height, width, torch.float32, 2, 256)
        ours, bare = timed["carafe forward+backward"], timed["bare Function forward+backward"]
        for _ in range(100):
            ours(), bare()
        current = _launch.PreparedCall.run

        def lean_run(self, pointers, device, stream):
            pointers += (0,)
            get_device, _, launch_kernel = runtime._driver
            get_device()
            for kernel, grid, block, layout, pick, shared_mem, module in self.steps:
                pointer = runtime._launchable[(device, module, kernel)].ptr
                params = layout.kernel_params(pick(pointers))
                launch_kernel(pointer, *grid, *block, shared_mem, stream, params, 0)

        as_is, lean = [], []
        try:
            for _ in range(25):
                _launch.PreparedCall.run = current
                ours_us, bare_us = bench.per_call_us(ours, 200), bench.per_call_us(bare, 200)
                _launch.PreparedCall.run = lean_run
                lean_us = bench.per_call_us(ours, 200)
                as_is.append(ours_us / bare_us)
                lean.append(lean_us / bare_us)
        finally:
            _launch.PreparedCall.run = current
    print(
        f"{level}: median ratio over the bare Function {statistics.median(as_is):.3f} as is, "
        f"{statistics.median(lean):.3f} with lean launches"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "13x21")
