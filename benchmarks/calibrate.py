"""Calibrate the cost model (``python -m carafe_cupy profile``) on a GPU.

Steps, each a separate command of ``benchmarks/gpu_validate.sh --part calibrate``:

    calibrate.py model  --out DIR            the model's prediction for this commit
    calibrate.py target --shape N,C,H,W      what ncu profiles: one forward+backward,
                                             unfused and fused, fp32 k5 G1 s2
    calibrate.py mmcv   --out DIR            mmcv's CARAFE against carafe_cupy (timings)
    calibrate.py table  --ncu CSV --out DIR  model against measured: calibration.md

Everything lands in DIR/calibration.json and DIR/calibration.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = ((2, 256, 52, 84), (2, 256, 64, 64))
K, G, S = 5, 1, 2
NCU_METRICS = {
    "duration_us": "gpu__time_duration.sum",
    "dram_read": "dram__bytes_read.sum",
    "dram_write": "dram__bytes_write.sum",
    "ld_sectors": "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum",
    "ld_requests": "l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum",
    "st_sectors": "l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum",
    "st_requests": "l1tex__t_requests_pipe_lsu_mem_global_op_st.sum",
    "shared_ld_conflicts": "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum",
    "shared_st_conflicts": "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum",
    "shared_ld_requests": "smsp__inst_executed_op_shared_ld.sum",
    "shared_st_requests": "smsp__inst_executed_op_shared_st.sum",
    "warp_instructions": "smsp__inst_executed.sum",
    "achieved_occupancy_pct": "sm__warps_active.avg.pct_of_peak_sustained_active",
}


def gpu_key(device_name: str) -> str:
    """The model's GPU for a device name; h100 when the table has no match."""
    lowered = device_name.lower()
    for key in ("h100", "a100", "t4"):
        if key in lowered:
            return key
    return "h100"


def _store(out: Path, section: str, value) -> None:
    path = out / "calibration.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[section] = value
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def model(args: argparse.Namespace) -> int:
    from carafe_cupy._plan.planner import Geometry
    from carafe_cupy._profile import report
    from carafe_cupy._profile.hardware import gpu

    key = args.gpu or gpu_key(_device_name())
    problems = [report.Problem(Geometry(*shape, K, G, S), "float32") for shape in SHAPES]
    records, summary = report.profile(problems, [gpu(key)], args.max_blocks or None)
    rows = [
        {**{k: v for k, v in r.items() if not k.startswith("_")}, "bound": r["_bound"],
         "terms_us": r["_terms"]}
        for r in records
    ]
    _store(args.out, "model", {"commit": _commit(), "gpu": key, "records": rows,
                               "summary": summary})
    print(f"model prediction for {key} at {len(SHAPES)} shapes: {len(rows)} kernel launches")
    return 0


def _device_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    except Exception:
        return ""


def _inputs(shape, device="cuda"):
    import torch

    n, c, h, w = shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    features = torch.randn(n, c, h, w, generator=gen).to(device).requires_grad_()
    logits = torch.randn(n, G * K * K * S * S, h, w, generator=gen).to(device).requires_grad_()
    masks = torch.nn.functional.pixel_shuffle(logits.detach(), S).view(n, G, K * K, h * S, w * S)
    masks = masks.softmax(2).view(n, G * K * K, h * S, w * S).requires_grad_()
    return features, masks, logits


def target(args: argparse.Namespace) -> int:
    """One unfused and one fused forward+backward (kernels compiled before ncu looks)."""
    import torch

    import carafe_cupy

    shape = tuple(int(v) for v in args.shape.split(","))
    features, masks, logits = _inputs(shape)
    for _ in range(2 if args.warm else 1):
        out = carafe_cupy.carafe(features, masks, K, G, S)
        out.backward(torch.ones_like(out))
        fused = carafe_cupy.carafe_from_logits(features, logits, K, G, S)
        fused.backward(torch.ones_like(fused))
    torch.cuda.synchronize()
    return 0


def _time_ms(fn, reps: int = 50) -> float:
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def mmcv(args: argparse.Namespace) -> int:
    import torch

    import carafe_cupy

    sys.path.insert(0, str(HERE))
    import mmcv_carafe

    missing = mmcv_carafe.available()
    if missing:
        print(missing)
        _store(args.out, "mmcv", {"status": missing})
        return 4
    mmcv_op = mmcv_carafe.carafe_function(mmcv_carafe.build())
    rows = []
    for shape in SHAPES:
        features, masks, _ = _inputs(shape)
        grad = torch.randn(shape[0], shape[1], shape[2] * S, shape[3] * S, device="cuda")
        ours = carafe_cupy.carafe(features, masks, K, G, S)
        theirs = mmcv_op(features, masks, K, G, S)
        error = (ours - theirs).abs().max().item()
        for name, op in (("carafe_cupy", carafe_cupy.carafe), ("mmcv", mmcv_op)):
            inputs = (features, masks, K, G, S)
            forward = _time_ms(lambda op=op, inputs=inputs: op(*inputs))
            both = _time_ms(lambda op=op, inputs=inputs, g=grad: op(*inputs).backward(g))
            rows.append({"shape": ",".join(map(str, shape)), "impl": name,
                         "forward_ms": forward, "fwd_bwd_ms": both, "max_abs_diff": error})
            print(rows[-1])
    _store(args.out, "mmcv", {"status": "ok", "device": _device_name(), "rows": rows})
    return 0


def parse_ncu_csv(text: str) -> list[dict]:
    """ncu ``--csv --print-units base`` output: one dict per profiled launch."""
    start = next((i for i, line in enumerate(text.splitlines()) if line.startswith('"ID"')), None)
    if start is None:
        return []
    launches: dict[str, dict] = {}
    body = "\n".join(text.splitlines()[start:])
    for row in csv.DictReader(io.StringIO(body)):
        launch = launches.setdefault(row["ID"], {"kernel": row["Kernel Name"].split("(")[0]})
        value = row["Metric Value"].replace(",", "")
        try:
            launch[row["Metric Name"]] = float(value)
        except ValueError:
            continue
    named = []
    for launch in launches.values():
        row = {"kernel": launch["kernel"]}
        for field, metric in NCU_METRICS.items():
            row[field] = launch.get(metric)
        if row["duration_us"] is not None:
            row["duration_us"] /= 1000.0  # base unit: nanoseconds
        named.append(row)
    return named


def _ratio(a, b):
    return None if a is None or not b else a / b


def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(args: argparse.Namespace) -> int:
    data = json.loads((args.out / "calibration.json").read_text())
    measured = {}
    for shape, path in zip(SHAPES, args.ncu):
        label = ",".join(map(str, shape))
        measured[label] = parse_ncu_csv(Path(path).read_text()) if Path(path).is_file() else []
    _store(args.out, "ncu", measured)
    model_rows = data.get("model", {}).get("records", [])
    lines = [
        "# Cost model against ncu",
        "",
        f"Model: commit `{data.get('model', {}).get('commit', '?')}`, constants of "
        f"`{data.get('model', {}).get('gpu', '?')}`; measured: ncu, one launch each.",
        "",
        "| shape | kernel | µs model / ncu | DRAM MB model / ncu | sectors/req ld model / ncu "
        "| bank conflicts/req model / ncu | warp-instr M model / ncu | occupancy % model / "
        "achieved |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for record in model_rows:
        runs = [m for m in measured.get(record["shape"], []) if m["kernel"] == record["kernel"]]
        ncu = runs[-1] if runs else {}
        dram = None
        if ncu.get("dram_read") is not None:
            dram = (ncu["dram_read"] + (ncu.get("dram_write") or 0)) / 1e6
        conflicts = _ratio(
            (ncu.get("shared_ld_conflicts") or 0) + (ncu.get("shared_st_conflicts") or 0),
            (ncu.get("shared_ld_requests") or 0) + (ncu.get("shared_st_requests") or 0),
        ) if ncu else None
        instructions = ncu.get("warp_instructions")
        lines.append(
            f"| {record['shape']} | {record['kernel']} | {record['est_us']:.1f} / "
            f"{_fmt(ncu.get('duration_us'), 1)} | "
            f"{record['global_bytes']['compulsory'] / 1e6:.1f} / {_fmt(dram, 1)} | "
            f"{_fmt(record['sectors_per_request']['load'])} / "
            f"{_fmt(_ratio(ncu.get('ld_sectors'), ncu.get('ld_requests')))} | "
            f"{_fmt(record['bank_conflicts']['per_request'])} / {_fmt(conflicts)} | "
            f"{record['sass_instructions']['warp_instructions'] / 1e6:.2f} / "
            f"{_fmt(None if instructions is None else instructions / 1e6)} | "
            f"{100 * record['occupancy']['fraction']:.0f} / "
            f"{_fmt(ncu.get('achieved_occupancy_pct'), 0)} |"
        )
    mmcv_rows = data.get("mmcv", {}).get("rows", [])
    if mmcv_rows:
        lines += ["", "## mmcv's CARAFE against carafe_cupy (ms, median of 50, CUDA events)",
                  "", "| shape | impl | forward | fwd+bwd |", "| --- | --- | ---: | ---: |"]
        lines += [f"| {r['shape']} | {r['impl']} | {r['forward_ms']:.4f} | "
                  f"{r['fwd_bwd_ms']:.4f} |" for r in mmcv_rows]
    else:
        lines += ["", f"mmcv: {data.get('mmcv', {}).get('status', 'not run')}"]
    (args.out / "calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    for name in ("model", "mmcv", "table"):
        step = steps.add_parser(name)
        step.add_argument("--out", type=Path, required=True)
    steps.choices["model"].add_argument("--gpu", help="h100, a100 or t4 (default: detected)")
    steps.choices["model"].add_argument("--max-blocks", type=int, default=64)
    steps.choices["table"].add_argument("--ncu", nargs=len(SHAPES), required=True,
                                        help="ncu CSV files, one per shape")
    run_target = steps.add_parser("target")
    run_target.add_argument("--shape", required=True)
    run_target.add_argument("--warm", action="store_true", help="run twice")
    args = parser.parse_args(argv)
    handlers = {"model": model, "target": target, "mmcv": mmcv, "table": table}
    return handlers[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
