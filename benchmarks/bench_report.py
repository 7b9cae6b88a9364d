"""The benchmark's report: headline, markdown table and plots."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from bench_carafepack import render_carafepack
from bench_cases import MODES, MiB

PORTS = ("unfold_lowres", "unfold_upsampled")


def add_speedups(results: list[dict[str, Any]]) -> None:
    """speedup = that implementation's median / carafe_cupy's, per (case, dtype, mode)."""
    ref = {
        (r["case"], r["dtype"], r["mode"]): r["median_ms"]
        for r in results
        if r["impl"] == "carafe_cupy" and r.get("status") == "ok"
    }
    for r in results:
        key = (r["case"], r["dtype"], r["mode"])
        if r["impl"] != "carafe_cupy" and r.get("status") == "ok" and key in ref:
            r["carafe_cupy_speedup"] = r["median_ms"] / ref[key]


def against_fastest_port(results: list[dict[str, Any]]) -> list[str]:
    """carafe_cupy against the faster of the two unfold ports, per case, dtype and mode."""
    lines = []
    by_key: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in results:
        if r.get("status") == "ok":
            by_key.setdefault((r["case"], r["dtype"], r["mode"]), {})[r["impl"]] = r
    for (case, dtype, mode), rows in by_key.items():
        ports = [rows[p] for p in PORTS if p in rows]
        if "carafe_cupy" not in rows or not ports:
            continue
        best = min(ports, key=lambda r: r["median_ms"])
        ours = rows["carafe_cupy"]
        lines.append(
            f"{case} {dtype} {mode}: carafe_cupy {ours['median_ms']:.1f} ms, fastest unfold port "
            f"({best['impl']}) {best['median_ms']:.1f} ms: "
            f"{best['median_ms'] / ours['median_ms']:.1f}x (medians)"
        )
    return lines


def headline(results: list[dict[str, Any]], warnings: list[str]) -> list[str]:
    """What a reader must know first: rows not measured, noise, load; then the comparison."""
    measured = [r for r in results if r.get("status") == "ok"]
    missing = [r for r in results if r.get("status") != "ok"]
    lines = [f"{len(measured)} of {len(results)} rows measured"]
    if missing:
        reasons = Counter(_reason(r.get("status", "?")) for r in missing)
        listing = "; ".join(f"{n} {why}" for why, n in reasons.items())
        lines[0] += f"; NOT MEASURED: {len(missing)} ({listing}), listed below the table"
    no_memory = [r for r in measured if "peak_mem_note" in r]
    if no_memory:
        reasons = Counter(str(r["peak_mem_note"]) for r in no_memory)
        listing = "; ".join(f"{n} {why}" for why, n in reasons.items())
        lines.append(
            f"peak memory NOT MEASURED for {len(no_memory)} of the measured rows ({listing}), "
            "listed below the table"
        )
    noisy = [r for r in measured if r.get("noisy")]
    if noisy:
        worst = max(noisy, key=lambda r: r["spread"])
        lines.append(
            f"WARNING: {len(noisy)} of {len(measured)} rows are noisy (max/min above 1.5; worst "
            f"{worst['spread']:.1f}x, {worst['case']} {worst['impl']} {worst['mode']}): "
            "compare minima, or rerun on a quieter machine"
        )
    lines += [f"WARNING: {w}" for w in warnings]
    return lines + against_fastest_port(results)


def _reason(status: str) -> str:
    """A skip reason without the figures that differ from row to row."""
    inner = status.removeprefix("skipped (").removesuffix(")")
    if " took " in inner and "budget" in inner:
        return "over the per-call time budget"
    if inner.startswith("needs ~"):
        return "not enough memory"
    return inner


def _fmt_ms(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if r.get("status") != "ok":
        s = r.get("status", "?")
        return "OOM" if s == "OOM" else ("skipped" if s.startswith("skipped") else "error")
    flag = " (noisy)" if r.get("noisy") else ""
    return f"{r['min_ms']:.3g} / {r['median_ms']:.3g} / {r['max_ms']:.3g}{flag}"


def _fmt(r: dict[str, Any] | None, key: str, spec: str, suffix: str = "") -> str:
    if r is None or r.get(key) is None:
        return "-"
    if key == "peak_mem_bytes":
        return f"{r[key] / MiB:.1f}"
    return format(r[key], spec) + suffix


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [f"# CARAFE benchmark: {meta['machine']} ({meta['device']})", ""]
    lines += [f"**{line}**" if i == 0 else f"- {line}" for i, line in enumerate(meta["headline"])]
    lines += [
        "",
        f"- date: {meta['date']}  commit: `{meta['commit']}`",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in meta["versions"].items()),
        f"- torch threads: {meta['torch_threads']}; timing: {meta['timing']}",
        f"- load average (1 min): {meta['load_start']} at the start, {meta['load_end']} at the end",
        f"- copy bandwidth ({report['copy_bytes'] // MiB} MiB `.copy_()`): "
        f"{report['copy_bandwidth_gbps']:.1f} GB/s",
        f"- memory: {meta['memory']}",
        f"- GB/s from {meta['gbps']} (median time)",
    ]
    for name, status in report["implementations"].items():
        if status != "ok":
            lines.append(f"- {name}: {status}")
    lines += [f"- NOTE: {note}" for note in meta["notes"]]
    lines += [
        "",
        "Times are min / median / max ms over interleaved repeats; memory is peak extra MiB; "
        "`x cupy` is that implementation's median over carafe_cupy's (fwd / fwd+bwd).",
        "",
        "| shape | dtype | impl | fwd ms | fwd+bwd ms | fwd MiB | fwd+bwd MiB | fwd GB/s "
        "| f+b GB/s | reps | x cupy |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    index = {(r["case"], r["dtype"], r["impl"], r["mode"]): r for r in report["results"]}
    seen = list(dict.fromkeys((r["case"], r["dtype"], r["impl"]) for r in report["results"]))
    for case, dtype, impl in seen:
        f = index.get((case, dtype, impl, "fwd"))
        b = index.get((case, dtype, impl, "fwd+bwd"))
        sp = "-"
        if impl != "carafe_cupy":
            sp = (
                f"{_fmt(f, 'carafe_cupy_speedup', '.2f')} / {_fmt(b, 'carafe_cupy_speedup', '.2f')}"
            )
        reps = f"{_fmt(f, 'reps', 'd')} / {_fmt(b, 'reps', 'd')}"
        lines.append(
            f"| {case} | {dtype} | {impl} | {_fmt_ms(f)} | {_fmt_ms(b)} "
            f"| {_fmt(f, 'peak_mem_bytes', '')} | {_fmt(b, 'peak_mem_bytes', '')} "
            f"| {_fmt(f, 'gbps', '.3g')} | {_fmt(b, 'gbps', '.3g')} | {reps} | {sp} |"
        )
    problems = [
        r for r in report["results"] if r.get("status") not in ("ok", None) or "peak_mem_note" in r
    ]
    if problems:
        lines += ["", "Not measured:", ""]
        for r in problems:
            what = r.get("status") if r.get("status") != "ok" else r.get("peak_mem_note")
            lines.append(f"- {r['case']} {r['dtype']} {r['impl']} {r['mode']}: {what}")
    lines += _render_first_call(report["first_call"])
    lines += render_carafepack(report.get("carafepack_fused", "not run"))
    return "\n".join(lines) + "\n"


def _render_first_call(fc: Any) -> list[str]:
    lines = ["", "First-call latency (carafe_cupy):", ""]
    if not isinstance(fc, dict):
        return lines + [f"- {fc}"]
    for label in ("cold", "warm"):
        val = fc.get(label)
        if isinstance(val, dict):
            parts = ", ".join(f"{k} {t * 1e3:.1f} ms" for k, t in val.items())
            lines.append(f"- {label} ({'empty' if label == 'cold' else 'filled'} cache): {parts}")
        else:
            lines.append(f"- {label}: {val}")
    return lines


def missing_any(report: dict[str, Any], dtype: str) -> bool:
    """Whether a row of ``dtype`` lacks its time or its peak memory."""
    return any(
        r["dtype"] == dtype and (r.get("status") != "ok" or "peak_mem_note" in r)
        for r in report["results"]
    )


def make_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    """Median time (bars, min-max whiskers) and peak memory per shape, one PNG per dtype."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib not installed: plot skipped"]
    made: list[str] = []
    cases = list(report["cases"])
    impls = [i for i, status in report["implementations"].items() if status == "ok"]
    rows = {(r["case"], r["dtype"], r["impl"], r["mode"]): r for r in report["results"]}
    for dtype in report["dtypes"]:
        fig, axes = plt.subplots(
            2,
            2,
            figsize=(max(8, 1.4 * len(cases) + 4), 8),
            squeeze=False,
            layout="constrained",  # titles, labels and legends are never clipped
        )
        width = 0.8 / max(len(impls), 1)
        any_data = False
        for col, mode in enumerate(MODES):
            for row_i, (key, title, ylabel, scale) in enumerate(
                (
                    ("median_ms", "time", "ms: median, whiskers min to max", 1.0),
                    ("peak_mem_bytes", "peak memory", "extra MiB at peak", MiB),
                )
            ):
                ax = axes[row_i][col]
                missing: list[tuple[float, str]] = []  # (x, impl) of rows without a value
                for j, impl in enumerate(impls):
                    xs, ys, lo, hi = [], [], [], []
                    for x, case in enumerate(cases):
                        r = rows.get((case, dtype, impl, mode))
                        if r is None or not isinstance(r.get(key), (int, float)):
                            missing.append((x + (j - (len(impls) - 1) / 2) * width, impl))
                            continue
                        xs.append(x + (j - (len(impls) - 1) / 2) * width)
                        ys.append(max(r[key] / scale, 1e-6))
                        lo.append(
                            ys[-1] - r.get("min_ms", r[key]) / scale if key == "median_ms" else 0
                        )
                        hi.append(
                            r.get("max_ms", r[key]) / scale - ys[-1] if key == "median_ms" else 0
                        )
                    if ys:
                        any_data = True
                        ax.bar(xs, ys, width=width, label=impl, yerr=[lo, hi], capsize=2)
                ax.set_yscale("log")
                # an unmeasured row is marked where its bar would be, never left blank
                for x, impl in missing:
                    ax.text(
                        x,
                        0.02,
                        f"{impl}: not measured",
                        transform=ax.get_xaxis_transform(),
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        color="0.35",
                        clip_on=True,
                    )
                ax.set_title(f"{mode} {dtype}: {title}")
                ax.set_xlim(-0.5, len(cases) - 0.5)  # every case's slot, with bars or not
                ax.set_xticks(range(len(cases)))
                ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
                ax.set_ylabel(ylabel)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8)
        if not any_data:
            plt.close(fig)
            continue
        meta = report["meta"]
        commit = str(meta["commit"])
        if commit.startswith("unknown"):
            commit = "commit unknown"
        else:  # the short hash, still marked when the tree had changes
            commit = commit.split()[0][:12] + ("+dirty" if "+dirty" in commit.split()[0] else "")
        fig.suptitle(f"CARAFE on {meta['machine']} ({meta['date'][:10]}, {commit})")
        if missing_any(report, dtype):
            fig.supxlabel("not measured: see the list under the table in results.md", fontsize=9)
        path = out_dir / f"plot_{dtype}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(str(path))
    return made
