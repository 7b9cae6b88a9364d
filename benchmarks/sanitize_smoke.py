"""Small CARAFE forward+backward for compute-sanitizer runs (memcheck, racecheck, ...).

Tiny shapes keep the instrumented run short; the configurations cover groups, an odd scale
factor and inputs smaller than the kernel (every window clipped by the border). Results are
checked against a float64 CPU reference so a silent wrong answer also fails the run.

    python benchmarks/sanitize_smoke.py [--device cuda|cpu] [--dtypes fp32,fp16]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

# (name, N, C, H, W, k, G, s)
CONFIGS = [
    ("k5-g2-s2", 2, 8, 7, 9, 5, 2, 2),
    ("k3-g1-s3", 1, 4, 5, 6, 3, 1, 3),
    ("small-hw", 1, 6, 2, 3, 5, 2, 2),  # H, W < k: all taps of some rows fall outside
]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def _reference() -> object:
    spec = importlib.util.spec_from_file_location("carafe_bench_baselines", HERE / "baselines.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.carafe_shift


def run(device: str, dtypes: list[str]) -> int:
    import carafe_cupy

    ref_fn = _reference()
    failures = 0
    for name, n, c, h, w, k, g, s in CONFIGS:
        gen = torch.Generator().manual_seed(0)
        feat = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
        masks = torch.rand(n, g * k * k, h * s, w * s, generator=gen, dtype=torch.float64)
        gout = torch.randn(n, c, h * s, w * s, generator=gen, dtype=torch.float64)
        fr, mr = feat.clone().requires_grad_(True), masks.clone().requires_grad_(True)
        out_ref = ref_fn(fr, mr, k, g, s)
        want = (out_ref.detach(), *torch.autograd.grad(out_ref, (fr, mr), gout))
        for dname in dtypes:
            dt = DTYPES[dname]
            f = feat.to(device=device, dtype=dt).requires_grad_(True)
            m = masks.to(device=device, dtype=dt).requires_grad_(True)
            out = carafe_cupy.carafe(f, m, k, g, s)
            got = (out, *torch.autograd.grad(out, (f, m), gout.to(device=device, dtype=dt)))
            if device == "cuda":
                torch.cuda.synchronize()
            errs = []
            for label, a, b in zip(("out", "grad_feat", "grad_masks"), got, want):
                scale = max(1.0, float(b.abs().max()))
                errs.append((label, float((a.detach().double().cpu() - b).abs().max()) / scale))
            bad = [e for e in errs if not e[1] <= TOL[dt]]
            failures += bool(bad)
            detail = ", ".join(f"{lbl} {e:.1e}" for lbl, e in errs)
            print(f"{'FAIL' if bad else 'ok  '} {name} {dname}: rel. max error {detail}")
    print("sanitize smoke:", "FAILED" if failures else "passed")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dtypes", default="fp32,fp16")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("sanitize smoke: CUDA not available", file=sys.stderr)
        return 2
    return run(args.device, [d for d in args.dtypes.split(",") if d])


if __name__ == "__main__":
    sys.exit(main())
