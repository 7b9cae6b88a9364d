"""The CPU forward (no grad, 2 threads) timed alone in a process, with and without the
first-touch pass: two sets of 15 calls each; min / median / max ms."""

import statistics
import time

import torch

import carafe_cupy
from carafe_cupy._cpu import pages

torch.set_num_threads(2)
features, masks = torch.randn(2, 256, 52, 84), torch.randn(2, 25, 104, 168)
with_pass = pages.first_touch_ranges


def no_pass(tensor, parts):
    return []


def run(label):
    times = []
    for _ in range(15):
        start = time.perf_counter()
        carafe_cupy.carafe(features, masks, 5, 1, 2)
        times.append((time.perf_counter() - start) * 1e3)
    print(f"{label} min {min(times):.1f} med {statistics.median(times):.1f} max {max(times):.1f}")


with torch.no_grad():
    carafe_cupy.carafe(features, masks, 5, 1, 2)
    for _ in range(2):
        pages.first_touch_ranges = with_pass
        run("touch  ")
        pages.first_touch_ranges = no_pass
        run("notouch")
