"""The CPU forward (no grad, 2 threads) timed straight after a peer ran in the same
process: ``python forward_after_peer.py compiled`` (the shift loop under torch.compile;
with and without the first-touch pass, and with 50 ms of sleep between) or
``python forward_after_peer.py unfold`` (the eager unfold port; with and without the pass
and huge pages). Min / median / max ms over 9 (compiled) or 7 (unfold) rounds."""

import statistics
import sys
import time
from pathlib import Path

import torch

import carafe_cupy
from carafe_cupy._cpu import pages

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from baselines import carafe_unfold_lowres  # noqa: E402
from cpu_peers import carafe_shift_upsampled  # noqa: E402

torch.set_num_threads(2)
features, masks = torch.randn(2, 256, 52, 84), torch.randn(2, 25, 104, 168)
touch, advise = pages.first_touch_ranges, pages.advise_huge_pages


def no_pass(tensor, parts):
    return []


def no_advice(tensor):
    return None


# label: (first-touch pass, huge-page advice, sleep s after the peer)
CASES = {
    "compiled": {
        "touch": (True, True, 0),
        "notouch": (False, True, 0),
        "gap50ms": (True, True, 0.05),
    },
    "unfold": {
        "touch+thp": (True, True, 0),
        "notouch+thp": (False, True, 0),
        "notouch-nothp": (False, False, 0),
    },
}
mode = sys.argv[1] if len(sys.argv) > 1 else "compiled"
if mode == "compiled":
    peer, rounds = torch.compile(carafe_shift_upsampled, dynamic=False), 9
else:
    peer, rounds = carafe_unfold_lowres, 7
with torch.no_grad():
    peer(features, masks, 5, 1, 2)
    carafe_cupy.carafe(features, masks, 5, 1, 2)
    times = {label: [] for label in CASES[mode]}
    for _ in range(rounds):
        for label, (with_touch, with_advice, gap) in CASES[mode].items():
            pages.first_touch_ranges = touch if with_touch else no_pass
            pages.advise_huge_pages = advise if with_advice else no_advice
            peer(features, masks, 5, 1, 2)
            time.sleep(gap)
            start = time.perf_counter()
            carafe_cupy.carafe(features, masks, 5, 1, 2)
            times[label].append((time.perf_counter() - start) * 1e3)
    for label, ts in times.items():
        print(f"{label} min {min(ts):.1f} med {statistics.median(ts):.1f} max {max(ts):.1f}")
