"""The exported ONNX graph in onnxruntime on the CPU: the package's formulation and others.

Run as a script::

    python benchmarks/bench_onnx.py [--shape 2,256,52,84] [--reps 9] [--threads N]
                                    [--formulations rows-matmul,taps] [--out DIR]

Each formulation is a standard-op form of CARAFE that ``carafe_cupy`` could export;
the package's own (``_torch/export.py``) is ``rows-matmul``. For each one, two models are
exported with the current exporter (``torch.onnx.export(..., dynamo=True)``) while
``carafe_cupy._torch.export.decomposed_forward`` is that formulation:

- ``carafepack``: ``CARAFEPack(C, 2)`` (k 5, G 1, 64 compressed channels), the whole layer;
- ``carafe``: ``CARAFE(5, 1, 2)`` alone, masks given.

Every session is checked against PyTorch (max abs difference, must be under 1e-5), then all
sessions run interleaved call by call, each round starting one further along, so load from
other processes hits them alike; times are min / median / max ms. onnxruntime runs on
``--threads`` intra-op threads (default: torch's thread count), graph optimisations on.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_cases import git_commit, machine_label, versions  # noqa: E402
from bench_timing import load_average, load_warnings  # noqa: E402

TOLERANCE = 1e-5


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def taps(features, masks, k, g, s, stride=1, dilation=1):
    """Each tap's window (low resolution, broadcast over the s*s sub-pixels) times its mask
    channel, added into the full output: 7-D broadcast Mul and Add, k*k times (the package's
    formulation up to December 2026)."""
    n, c, h, w = features.shape
    t, d, reach = stride, dilation, (k - 1) // 2 * dilation
    rows, cols = (h + t - 1) // t, (w + t - 1) // t
    padded = F.pad(_acc(features), (reach,) * 4).reshape(n, g, c // g, h + 2 * reach, -1)
    mask_taps = _acc(masks).reshape(n, g, k * k, rows, s, cols, s)
    out = None
    for i in range(k):
        for j in range(k):
            window = padded[
                :,
                :,
                :,
                i * d : i * d + (rows - 1) * t + 1 : t,
                j * d : j * d + (cols - 1) * t + 1 : t,
            ]
            window = window.reshape(n, g, c // g, rows, 1, cols, 1)
            term = window * mask_taps[:, :, i * k + j].unsqueeze(2)
            out = term if out is None else out + term
    return out.reshape(n, c, rows * s, cols * s).to(features.dtype)


def upsampled_shift(features, masks, k, g, s, stride=1, dilation=1):
    """Nearest-upsampled features padded by r*s, then per tap a Slice, a Mul by the mask
    channel (broadcast over the group's channels) and an Add, all at output resolution.
    Stride 1 only."""
    if stride != 1:
        raise ValueError("upsampled_shift covers stride 1 only")
    n, c, h, w = features.shape
    d, ho, wo = dilation, h * s, w * s
    pad = (k - 1) // 2 * d * s
    up = _acc(features).reshape(n, c, h, 1, w, 1).expand(n, c, h, s, w, s).reshape(n, c, ho, wo)
    up = F.pad(up, (pad,) * 4).reshape(n, g, c // g, ho + 2 * pad, wo + 2 * pad)
    mask_taps = _acc(masks).reshape(n, g, k * k, 1, ho, wo)
    out = None
    for i in range(k):
        for j in range(k):
            window = up[:, :, :, i * d * s : i * d * s + ho, j * d * s : j * d * s + wo]
            term = window * mask_taps[:, :, i * k + j]
            out = term if out is None else out + term
    return out.reshape(n, c, ho, wo).to(features.dtype)


def all_taps_matmul(features, masks, k, g, s, stride=1, dilation=1):
    """One batched MatMul per window center over all k*k taps: (s*s, k*k) @ (k*k, C/G).
    Materialises k*k copies of the input (channels last)."""
    n, c, h, w = features.shape
    t, d, reach, cg = stride, dilation, (k - 1) // 2 * dilation, c // g
    rows, cols = (h + t - 1) // t, (w + t - 1) // t
    padded = F.pad(_acc(features), (reach,) * 4)
    padded = padded.reshape(n, g, cg, h + 2 * reach, w + 2 * reach).permute(0, 3, 4, 1, 2)
    windows = [
        padded[:, i * d : i * d + (rows - 1) * t + 1 : t, j * d : j * d + (cols - 1) * t + 1 : t]
        for i in range(k)
        for j in range(k)
    ]
    columns = torch.stack(windows, dim=4)  # (N, Hc, Wc, G, k*k, C/G)
    m = _acc(masks).reshape(n, g, k * k, rows, s, cols, s).permute(0, 3, 5, 1, 4, 6, 2)
    out = torch.matmul(m.reshape(n, rows, cols, g, s * s, k * k), columns)
    out = out.reshape(n, rows, cols, g, s, s, cg).permute(0, 3, 6, 1, 4, 2, 5)
    return out.reshape(n, c, rows * s, cols * s).to(features.dtype)


def formulations() -> dict[str, Callable]:
    from carafe_cupy._torch import export as package_export

    return {
        "rows-matmul": package_export.decomposed_forward,  # the package's
        "taps": taps,
        "upsampled-shift": upsampled_shift,
        "all-taps-matmul": all_taps_matmul,
    }


def export_session(model, inputs, formulation: Callable, threads: int):
    """Export ``model`` while the package's decomposition is ``formulation``; an
    onnxruntime session of the result and the ONNX op types it uses."""
    import onnxruntime

    from carafe_cupy._torch import export as package_export

    package = package_export.decomposed_forward
    package_export.decomposed_forward = formulation
    try:
        exported = torch.onnx.export(model, inputs, dynamo=True, verbose=False)
    finally:
        package_export.decomposed_forward = package
    proto = exported.model_proto
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    op_types = sorted({f"{node.domain or 'ai.onnx'}:{node.op_type}" for node in proto.graph.node})
    return session, op_types


def models(shape: tuple[int, int, int, int]) -> dict[str, tuple[torch.nn.Module, tuple]]:
    from carafe_cupy import CARAFE, CARAFEPack

    n, c, h, w = shape
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    pack = CARAFEPack(c, 2).eval()
    # trained-like masks, not the near-uniform ones of the initial content encoder
    torch.nn.init.normal_(pack.content_encoder.weight, std=0.1)
    x = torch.randn(n, c, h, w, generator=gen)
    masks = torch.rand(n, 25, 2 * h, 2 * w, generator=gen)
    return {"carafepack": (pack, (x,)), "carafe": (CARAFE(5, 1, 2).eval(), (x, masks))}


def run(shape, names: list[str], reps: int, threads: int) -> list[dict[str, Any]]:
    forms = formulations()
    rows, sessions = [], []
    for level, (model, inputs) in models(shape).items():
        with torch.no_grad():
            expected = model(*inputs).numpy()
        for name in names:
            row: dict[str, Any] = {"level": level, "formulation": name}
            rows.append(row)
            start = time.perf_counter()
            session, row["op_types"] = export_session(model, inputs, forms[name], threads)
            row["export_s"] = time.perf_counter() - start
            feeds = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), inputs)}
            (got,) = session.run(None, feeds)  # the warm-up call
            row["max_abs_diff"] = float(np.abs(got - expected).max())
            row["matches"] = bool(np.allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE))
            sessions.append((row, session, feeds, []))
    for round_index in range(reps):
        for offset in range(len(sessions)):
            _, session, feeds, times = sessions[(round_index + offset) % len(sessions)]
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
    for row, _, _, times in sessions:
        row.update(
            min_ms=min(times) * 1e3,
            median_ms=statistics.median(times) * 1e3,
            max_ms=max(times) * 1e3,
            reps=len(times),
        )
    return rows


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [f"# The exported graph in onnxruntime: {meta['machine']}", ""]
    lines += [f"- WARNING: {w}" for w in meta["warnings"]]
    lines += [
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}  commit: `{meta['commit']}`",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- input {meta['shape']}, fp32; k 5, G 1, s 2; onnxruntime {meta['onnxruntime']}, "
        f"CPUExecutionProvider, {meta['threads']} intra-op threads",
        f"- {meta['reps']} interleaved rounds after one checked warm-up call each; "
        "min / median / max ms; the package exports `rows-matmul`",
        f"- load average (1 min): {meta['load_start']} at the start, {meta['load_end']} at the end",
        "",
        "| model | formulation | ms | x the package's (median) | max abs diff | ONNX ops |",
        "|---|---|---:|---:|---:|---|",
    ]
    package = {
        r["level"]: r["median_ms"] for r in report["rows"] if r["formulation"] == "rows-matmul"
    }
    for r in report["rows"]:
        ratio = r["median_ms"] / package[r["level"]] if r["level"] in package else None
        ops = ", ".join(op.split(":")[1] for op in r["op_types"])
        flag = "" if r["matches"] else " (MISMATCH)"
        lines.append(
            f"| {r['level']} | {r['formulation']} | {r['min_ms']:.0f} / {r['median_ms']:.0f} / "
            f"{r['max_ms']:.0f} | {'-' if ratio is None else f'{ratio:.2f}'} "
            f"| {r['max_abs_diff']:.2g}{flag} | {ops} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="2,256,52,84", help="N,C,H,W (default %(default)s)")
    p.add_argument("--reps", type=int, default=9, help="interleaved rounds (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--formulations", default=",".join(formulations()))
    p.add_argument("--out", type=Path, default=None, help="also write results.md/.json here")
    args = p.parse_args(argv)
    import onnxruntime

    shape = tuple(int(v) for v in args.shape.split(","))
    names = [n for n in args.formulations.split(",") if n]
    unknown = [n for n in names if n not in formulations()]
    if len(shape) != 4 or unknown:
        print(f"--shape wants N,C,H,W; --formulations from {list(formulations())}", file=sys.stderr)
        return 2
    threads = args.threads or torch.get_num_threads()
    load_start, commit = load_average(), git_commit()
    rows = run(shape, names, args.reps, threads)
    load_end = load_average()
    report = {
        "meta": {
            "command": "python benchmarks/bench_onnx.py " + shlex.join(argv),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit,
            "machine": machine_label("cpu"),
            "versions": versions(str(getattr(sys.modules.get("carafe_cupy"), "__version__", "?"))),
            "onnxruntime": onnxruntime.__version__,
            "shape": "x".join(map(str, shape)),
            "threads": threads,
            "reps": args.reps,
            "load_start": load_start,
            "load_end": load_end,
            "warnings": load_warnings(load_start, load_end, threads),
        },
        "rows": rows,
    }
    text = render(report)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "results.md").write_text(text)
    return 0 if all(r["matches"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
