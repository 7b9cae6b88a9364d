"""CARAFEPack with the fused normaliser against pixel_shuffle + softmax + carafe (GPU)."""

from __future__ import annotations

import statistics
from typing import Any

import torch
from bench_cases import DTYPES, Case, is_oom, short_error


def carafepack_fused_vs_unfused(
    cases: list[Case], dtypes: list[str], device: str, reps: int = 20
) -> list[dict[str, Any]] | str:
    """Median time and allocator peak of CARAFEPack, fused and unfused, per case and dtype.

    The fused path exists only in the CUDA kernels, so this runs on a GPU.
    """
    if device != "cuda":
        return "not run: the fused normaliser exists only in the CUDA kernels"
    import carafe_cupy

    rows = []
    for case in cases:
        for dname in dtypes:
            dtype = DTYPES[dname]
            torch.manual_seed(0)
            pack = carafe_cupy.CARAFEPack(case.c, case.s, up_kernel=case.k, up_group=case.g)
            pack = pack.to(device=device, dtype=dtype)
            x = torch.randn(case.n, case.c, case.h, case.w, device=device, dtype=dtype)
            x.requires_grad_(True)
            for fused in (True, False):
                pack.fuse_normalizer = fused
                for mode in ("fwd", "fwd+bwd"):
                    row = {"case": case.name, "dtype": dname, "fused": fused, "mode": mode}
                    try:
                        row.update(_time_pack(pack, x, mode, reps))
                    except Exception as exc:  # recorded, the run goes on
                        row["status"] = "OOM" if is_oom(exc) else f"error: {short_error(exc)}"
                    rows.append(row)
                    x.grad = None
                    pack.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    return rows


def _time_pack(pack: Any, x: torch.Tensor, mode: str, reps: int) -> dict[str, Any]:
    for _ in range(3):
        _pack_step(pack, x, mode)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        _pack_step(pack, x, mode)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {
        "median_ms": statistics.median(times),
        "peak_mem_bytes": torch.cuda.max_memory_allocated() - base,
        "status": "ok",
    }


def _pack_step(pack: Any, x: torch.Tensor, mode: str) -> None:
    if mode == "fwd":
        with torch.no_grad():
            pack(x)
    else:
        pack(x).sum().backward()


def render_carafepack(rows: list[dict[str, Any]] | str) -> list[str]:
    lines = ["", "CARAFEPack, fused normaliser vs pixel_shuffle + softmax + carafe:", ""]
    if isinstance(rows, str):
        return lines + [f"- {rows}"]
    lines += [
        "| shape | dtype | mode | fused ms | unfused ms | speed-up | fused MiB | unfused MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    keyed = {(r["case"], r["dtype"], r["mode"], r["fused"]): r for r in rows}
    for case, dname, mode, fused in keyed:
        if not fused:
            continue
        a, b = keyed[(case, dname, mode, True)], keyed.get((case, dname, mode, False), {})
        if a.get("status") != "ok" or b.get("status") != "ok":
            lines.append(
                f"| {case} | {dname} | {mode} | {a.get('status')} | {b.get('status')} | - | - | - |"
            )
            continue
        lines.append(
            f"| {case} | {dname} | {mode} | {a['median_ms']:.3f} | {b['median_ms']:.3f} | "
            f"{b['median_ms'] / a['median_ms']:.2f} | {a['peak_mem_bytes'] / 2**20:.1f} | "
            f"{b['peak_mem_bytes'] / 2**20:.1f} |"
        )
    return lines
