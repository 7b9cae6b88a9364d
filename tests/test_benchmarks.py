"""The benchmark's reference implementations and its report format (CPU only, fast)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
DATA = Path(__file__).resolve().parent / "data"


def _load(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # registered first so the module can find itself while loading
    spec.loader.exec_module(mod)
    return mod


baselines = _load("carafe_bench_baselines", BENCH / "baselines.py")
bench = _load("carafe_bench", BENCH / "bench_carafe.py")

IMPLS = [baselines.carafe_unfold_upsampled, baselines.carafe_unfold_lowres, baselines.carafe_shift]
# (N, C, H, W, k, G, s): groups, odd scale, H/W smaller than the kernel, scale 1.
CONFIGS = [
    (2, 8, 3, 4, 5, 2, 2),
    (1, 6, 2, 5, 3, 1, 3),
    (2, 8, 3, 3, 5, 4, 2),
    (1, 4, 2, 2, 7, 1, 1),
    (1, 3, 4, 3, 3, 3, 2),
]


def naive_carafe(feat: np.ndarray, masks: np.ndarray, k: int, g: int, s: int) -> np.ndarray:
    """Straight from the definition, one output pixel and tap at a time."""
    n, c, h, w = feat.shape
    r, cg = (k - 1) // 2, c // g
    out = np.zeros((n, c, h * s, w * s), dtype=np.float64)
    for y in range(h * s):
        for x in range(w * s):
            for i in range(k):
                for j in range(k):
                    yy, xx = y // s + i - r, x // s + j - r
                    if not (0 <= yy < h and 0 <= xx < w):
                        continue
                    for gi in range(g):
                        cs = slice(gi * cg, (gi + 1) * cg)
                        m = masks[:, gi * k * k + i * k + j, y, x]
                        out[:, cs, y, x] += m[:, None] * feat[:, cs, yy, xx]
    return out


def _inputs(cfg, seed=0, dtype=torch.float64):
    n, c, h, w, k, g, s = cfg
    gen = torch.Generator().manual_seed(seed)
    feat = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    masks = torch.randn(n, g * k * k, h * s, w * s, generator=gen, dtype=dtype)
    return feat, masks


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
def test_baseline_matches_naive_loop(fn, cfg):
    feat, masks = _inputs(cfg)
    k, g, s = cfg[4:]
    want = naive_carafe(feat.numpy(), masks.numpy(), k, g, s)
    got = fn(feat, masks, k, g, s).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_baseline_gradients_agree(cfg):
    feat, masks = _inputs(cfg, seed=1)
    k, g, s = cfg[4:]
    grads = []
    for fn in IMPLS:
        f = feat.clone().requires_grad_(True)
        m = masks.clone().requires_grad_(True)
        out = fn(f, m, k, g, s)
        gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
        grads.append(torch.autograd.grad(out, (f, m), gout))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_shift_gradcheck():
    feat, masks = _inputs((1, 4, 3, 2, 3, 2, 2), seed=3)
    feat.requires_grad_(True)
    masks.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda f, m: baselines.carafe_shift(f, m, 3, 2, 2), (feat, masks)
    )


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
def test_baseline_matches_mmcv_golden(fn):
    def load(name, shape):
        return torch.from_numpy(np.fromfile(DATA / name, dtype=np.float32).reshape(shape))

    feat = load("carafe_feat.bin", (2, 64, 3, 3)).requires_grad_(True)
    masks = load("carafe_mask.bin", (2, 100, 6, 6)).requires_grad_(True)
    out = fn(feat, masks, 5, 4, 2)
    gf, gm = torch.autograd.grad(out.sum(), (feat, masks))
    torch.testing.assert_close(out, load("carafe_output.bin", (2, 64, 6, 6)), atol=1e-3, rtol=0)
    torch.testing.assert_close(gf, load("carafe_feat_grad.bin", (2, 64, 3, 3)), atol=1e-3, rtol=0)
    torch.testing.assert_close(gm, load("carafe_mask_grad.bin", (2, 100, 6, 6)), atol=1e-3, rtol=0)


def test_baseline_rejects_bad_shapes():
    feat, masks = _inputs((1, 4, 3, 3, 3, 1, 2))
    with pytest.raises(ValueError):
        baselines.carafe_shift(feat, masks, 3, 3, 2)  # 4 channels, 3 groups
    with pytest.raises(ValueError):
        baselines.carafe_unfold_lowres(feat, masks[:, :, :-1], 3, 1, 2)


def test_minimal_bytes():
    case = bench.Case("t", 2, 8, 3, 4, k=5, g=2, s=2)
    feat, masks, out = 2 * 8 * 3 * 4, 2 * 50 * 6 * 8, 2 * 8 * 6 * 8
    assert bench.minimal_bytes(case, torch.float32, "fwd") == 4 * (feat + masks + out)
    assert bench.minimal_bytes(case, torch.float16, "fwd+bwd") == 2 * 2 * (feat + masks + out)


def test_slugify():
    assert bench.slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert bench.slugify("Intel(R) Xeon(R) CPU @ 2.20GHz") == "intel-xeon-cpu-2-20ghz"


class _FakeDistribution:
    """importlib.metadata's view of a non-editable install in ``site``."""

    def __init__(self, site: Path, direct_url: dict | None):
        self.site, self.direct_url = site, direct_url

    def locate_file(self, path: str) -> Path:
        return self.site / path

    def read_text(self, name: str) -> str | None:
        return json.dumps(self.direct_url) if self.direct_url is not None else None


def _installed_outside_git(tmp_path, monkeypatch, direct_url):
    """The package and the benchmarks as a wheel puts them: in site-packages, no git."""
    import importlib.metadata

    cases = sys.modules["bench_cases"]
    site = tmp_path / "site-packages"
    (site / "carafe_cupy" / "benchmarks").mkdir(parents=True)
    (site / "carafe_cupy" / "__init__.py").write_text("")
    (site / "carafe_cupy" / "benchmarks" / "bench_cases.py").write_text("")
    monkeypatch.delenv("CARAFE_CUPY_COMMIT", raising=False)
    monkeypatch.setattr(cases, "HERE", site / "carafe_cupy" / "benchmarks")
    monkeypatch.setattr(cases, "_package_init", lambda: site / "carafe_cupy" / "__init__.py")
    monkeypatch.setattr(
        importlib.metadata, "distribution", lambda name: _FakeDistribution(site, direct_url)
    )
    return cases


def _head() -> str:
    root = BENCH.parent
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()


def test_commit_of_the_checkout(monkeypatch):
    monkeypatch.delenv("CARAFE_CUPY_COMMIT", raising=False)
    commit = sys.modules["bench_cases"].git_commit()
    if not _head():
        pytest.skip("not run from a git checkout")
    assert commit.removesuffix("+dirty") == _head()


def test_commit_of_an_install_built_from_a_checkout(tmp_path, monkeypatch):
    url = {"url": BENCH.parent.resolve().as_uri(), "dir_info": {}}
    commit = _installed_outside_git(tmp_path, monkeypatch, url).git_commit()
    if not _head():
        pytest.skip("not run from a git checkout")
    assert commit.startswith(_head()), commit
    assert f"HEAD now of {BENCH.parent.resolve()}, which this install was built from" in commit


def test_commit_recorded_by_a_vcs_install(tmp_path, monkeypatch):
    url = {"url": "https://example.invalid/carafe_cupy.git",
           "vcs_info": {"vcs": "git", "commit_id": "0123abcd" * 5}}  # fmt: skip
    commit = _installed_outside_git(tmp_path, monkeypatch, url).git_commit()
    assert commit.startswith("0123abcd" * 5 + " (recorded at install")


def test_commit_unknown_says_why(tmp_path, monkeypatch):
    cases = _installed_outside_git(tmp_path, monkeypatch, None)
    commit = cases.git_commit()
    assert commit.startswith("unknown (")
    assert "is not in a git checkout" in commit
    assert "records no commit" in commit and "set CARAFE_CUPY_COMMIT" in commit
    monkeypatch.setenv("CARAFE_CUPY_COMMIT", "v0.1.0-7-gabc1234")
    assert cases.git_commit() == "v0.1.0-7-gabc1234"


def test_run_benchmark_quick_cpu_report(tmp_path):
    tiny = [bench.Case("tiny-a", 1, 4, 3, 4, k=3, g=2, s=2), bench.Case("tiny-b", 1, 4, 2, 2)]
    report = bench.run_benchmark(
        quick=True,
        device="cpu",
        out_dir=tmp_path,
        plot=False,
        shapes=tiny,
        dtypes=["fp32"],
        progress=False,
        verbose=False,
        reps=2,
    )
    on_disk = json.loads((tmp_path / "results.json").read_text())
    md = (tmp_path / "results.md").read_text()
    for rep in (report, on_disk):
        assert rep["schema"] == 2
        assert set(rep["meta"]) >= {"date", "commit", "device", "device_name", "versions"}
        assert rep["meta"]["device"] == "cpu"
        assert set(rep["meta"]["versions"]) >= {"python", "torch", "cupy", "carafe_cupy"}
        assert rep["copy_bandwidth_gbps"] > 0
        assert rep["first_call"].startswith("not applicable")
        assert list(rep["cases"]) == ["tiny-a", "tiny-b"]
        impls = rep["implementations"]
        assert impls["unfold_lowres"] == impls["unfold_upsampled"] == impls["shift"] == "ok"
        assert {"carafe_cupy", "mmcv", "carafe_ext"} <= set(impls)
        rows = rep["results"]
        run = [i for i, v in impls.items() if v == "ok"]
        assert len(rows) == 2 * len(run) * 2  # cases x impls x modes
        for row in rows:
            assert row["mode"] in ("fwd", "fwd+bwd")
            assert row["dtype"] == "fp32"
            assert isinstance(row["status"], str)
            if row["impl"] in ("unfold_lowres", "unfold_upsampled", "shift"):
                assert row["status"] == "ok", row
            if row["status"] == "ok":
                assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
                assert row["reps"] >= 2
                assert row["gbps"] > 0 and row["pct_copy_bw"] > 0
                assert "peak_mem_bytes" in row
        if impls["carafe_cupy"] == "ok":
            assert any("carafe_cupy_speedup" in r for r in rows)
    assert report["plots"] == ["plot disabled"]
    assert "| shape | dtype | impl | fwd ms |" in md
    assert md.splitlines()[2].startswith(
        f"**{len(report['results'])} of {len(report['results'])} rows measured"
    )
    for name in ("tiny-a", "tiny-b"):
        assert f"| {name} | fp32 | shift |" in md


calibrate = _load("carafe_bench_calibrate", BENCH / "calibrate.py")

NCU_COLUMNS = (
    "ID,Process ID,Process Name,Host Name,Kernel Name,Context,Stream,Block Size,Grid Size,"
    "Device,CC,Section Name,Metric Name,Metric Unit,Metric Value"
).split(",")
NCU_METRICS = (
    ("gpu__time_duration.sum", "nsecond", "52,480"),
    ("dram__bytes_read.sum", "byte", "12,400,000"),
    ("l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum", "sector", "600"),
    ("l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum", "request", "100"),
)
NCU_LAUNCH = ("0", "1", "python", "h", "carafe_forward_tiled_k5_p2_float32", "1", "7",
              "(32, 8, 1)", "(1248, 1, 1)", "0", "9.0", "Command line profiler metrics")
NCU_CSV = "==PROF== Connected to process 1234\n" + "\n".join(
    ",".join(f'"{value}"' for value in row)
    for row in [NCU_COLUMNS, *[(*NCU_LAUNCH, *metric) for metric in NCU_METRICS]]
)


def test_ncu_csv_is_read_per_launch():
    (launch,) = calibrate.parse_ncu_csv(NCU_CSV)
    assert launch["kernel"] == "carafe_forward_tiled_k5_p2_float32"
    assert launch["duration_us"] == pytest.approx(52.48)
    assert launch["dram_read"] == 12_400_000
    assert launch["ld_sectors"] / launch["ld_requests"] == 6
    assert launch["warp_instructions"] is None  # not in this output
    assert calibrate.gpu_key("NVIDIA H100 80GB HBM3") == "h100"
    assert calibrate.gpu_key("Tesla T4") == "t4"


def test_gpu_validate_calibration_dry_run(tmp_path):
    """The calibration part runs on a CPU: the model's prediction and the table; the
    ncu and mmcv steps are printed, not run."""
    import os
    import subprocess

    pytest.importorskip("cupy")
    out = tmp_path / "results"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_validate.sh"), "--dry-run", "--part", "calibrate",
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(path.name for path in out.iterdir())
    assert files == ["calibration.json", "calibration.md", "steps.log", "summary.md"]
    summary = (out / "summary.md").read_text()
    assert "| calibrate_model | ok (rc 0) |" in summary
    assert "| ncu_2x256x52x84 | not run (dry run) |" in summary
    assert "| mmcv_baseline | not run (dry run) |" in summary
    table = (out / "calibration.md").read_text()
    assert "carafe_backward_masks_tiled_k5_p4_float32" in table and "2,256,64,64" in table
    data = json.loads((out / "calibration.json").read_text())
    assert data["model"]["gpu"] == "h100" and len(data["model"]["records"]) >= 6
    assert "--kernel-name regex:carafe" in (out / "steps.log").read_text()


def _bench_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carafe_cupy", "bench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_bench_help_names_its_program_and_lists_full(tmp_path):
    result = _bench_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m carafe_cupy bench")
    assert "--full" in result.stdout and "--contention" in result.stdout
    assert "__main__.py" not in result.stdout


def test_bench_writes_under_the_current_directory_and_reports_dropped_rows(tmp_path):
    result = _bench_cli(
        "--shapes", "quick-13x21", "--dtypes", "fp32", "--impls", "carafe_cupy,shift",
        "--no-plot", "--no-memory", "--budget", "0", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (out_dir,) = (tmp_path / "carafe_bench_out").iterdir()
    md = (out_dir / "results.md").read_text()
    # a zero per-call budget leaves every row out, and the headline says so
    assert "**0 of 4 rows measured; NOT MEASURED: 4 (" in md
    assert "budget" in md.splitlines()[2]


def test_interleaved_timing_reports_min_median_max():
    calls = []

    def slow(feat, masks, k, g, s):
        calls.append("slow")
        return baselines.carafe_shift(feat, masks, k, g, s)

    def fast(feat, masks, k, g, s):
        calls.append("fast")
        return baselines.carafe_shift(feat, masks, k, g, s)

    case = bench.Case("t", 1, 4, 3, 3, k=3, g=1, s=2)
    ins = bench.make_inputs(case, torch.float32, "cpu")
    timed = bench.time_interleaved(
        {"slow": slow, "fast": fast}, case, ins, "fwd", "cpu", reps=4, min_time_s=0, budget_s=10
    )
    # one warm-up each, then rounds that alternate which goes first
    assert calls[:2] == ["slow", "fast"]
    assert calls[2:6] == ["slow", "fast", "fast", "slow"]
    for row in timed.values():
        assert row["status"] == "ok" and row["reps"] == 4
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]



def test_interleaved_timing_stops_at_the_deadline_after_a_few_rounds():
    case = bench.Case("t", 1, 4, 3, 3, k=3, g=1, s=2)
    ins = bench.make_inputs(case, torch.float32, "cpu")
    timed = bench.time_interleaved(
        {"shift": baselines.carafe_shift}, case, ins, "fwd", "cpu",
        reps=50, min_time_s=0, budget_s=10, deadline=0.0,
    )  # fmt: skip
    assert timed["shift"]["status"] == "ok"
    assert timed["shift"]["reps"] == sys.modules["bench_timing"].MIN_REPS


def test_memory_children_end_within_the_whole_run_budget(monkeypatch):
    """The short run's budget covers the memory children too, with the rows they miss
    listed, so that the whole run ends on time."""
    import time

    case = bench.Case("t", 1, 4, 3, 3, k=3, g=1, s=2)
    rows = [{"case": "t", "dtype": "fp32", "impl": "shift", "mode": "fwd", "status": "ok"}]
    settings = {"total_budget_s": 45.0, "budget": 5.0}
    timeouts = []

    def fake_peak_bytes(case, runs, timeout_s, threads=None):
        timeouts.append((timeout_s, threads))
        return {"fp32|shift|fwd": 1 << 20}

    monkeypatch.setattr(bench, "cpu_peak_bytes", fake_peak_bytes)
    runs = [("fp32", "shift", "fwd")]
    bench._add_cpu_memory(rows, case, runs, settings, time.perf_counter() - 40)
    ((timeout, threads),) = timeouts
    assert timeout <= 5.0 and threads == torch.get_num_threads()
    assert rows[0]["peak_mem_bytes"] == 1 << 20
    # no time left: no child, and the row says why its memory is missing
    bench._add_cpu_memory(rows, case, runs, settings, time.perf_counter() - 50)
    assert len(timeouts) == 1
    assert rows[0]["peak_mem_bytes"] is None
    assert rows[0]["peak_mem_note"] == "skipped (whole-run budget 45 s spent)"
    (line,) = [line for line in bench.headline(rows, []) if "peak memory" in line]
    assert line.startswith("peak memory NOT MEASURED for 1 of the measured rows (1 skipped")


def test_memory_child_runs_with_the_timed_calls_threads():
    children = sys.modules["bench_children"]
    spec = {"case": list(bench.Case("t", 1, 4, 3, 3, k=3, g=1, s=2)),
            "runs": [("fp32", "shift", "fwd")], "threads": 1}  # fmt: skip
    before = torch.get_num_threads()
    try:
        got = children.memory_child(spec)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert "fp32|shift|fwd" in got or "error" in got


def test_short_cpu_run_uses_one_thread_and_gives_the_setting_back(tmp_path):
    before = torch.get_num_threads()
    if before < 2:
        pytest.skip("torch already runs one thread here")
    tiny = [bench.Case("tiny-a", 1, 4, 3, 4, k=3, g=2, s=2)]
    report = bench.run_benchmark(
        quick=True, device="cpu", out_dir=tmp_path, plot=False, shapes=tiny, dtypes=["fp32"],
        impls=["shift"], progress=False, verbose=False, reps=1, measure_memory=False,
    )  # fmt: skip
    assert report["meta"]["torch_threads"] == 1
    assert any("1 torch thread" in note for note in report["meta"]["notes"])
    assert torch.get_num_threads() == before


def _captured_plot(report, tmp_path, monkeypatch):
    """The figure of make_plots as drawn (not closed), for inspection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    made = bench.make_plots(report, tmp_path)
    assert made and all(Path(path).is_file() for path in made)
    return figures[0]


def _plot_report(results):
    return {
        "meta": {"machine": "AMD EPYC, 2 cores, 1 torch threads", "date": "2026-12-07T10:00",
                 "commit": "0123456789abcdef0123+dirty"},
        "cases": {"quick-13x21": {}, "quick-26x42": {}},
        "implementations": {"carafe_cupy": "ok", "unfold_lowres": "ok", "unfold_upsampled": "ok",
                            "shift": "ok"},
        "dtypes": ["fp32"],
        "results": results,
    }  # fmt: skip


def test_plot_titles_fit_and_unmeasured_rows_are_marked(tmp_path, monkeypatch):
    impls = ["carafe_cupy", "unfold_lowres", "unfold_upsampled", "shift"]
    results = []
    for case in ("quick-13x21", "quick-26x42"):
        for impl in impls:
            for mode in ("fwd", "fwd+bwd"):
                row = {"case": case, "dtype": "fp32", "impl": impl, "mode": mode}
                if case == "quick-26x42":
                    row["status"] = "skipped (whole-run budget 45 s spent)"
                else:
                    row.update(status="ok", median_ms=5.0, min_ms=4.0, max_ms=6.0,
                               peak_mem_bytes=1 << 20)  # fmt: skip
                results.append(row)
    figure = _captured_plot(_plot_report(results), tmp_path, monkeypatch)
    renderer = figure.canvas.get_renderer()
    box = figure.bbox
    texts = [figure._suptitle] + [ax.title for ax in figure.axes]
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, text.get_text()
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1, text.get_text()
    assert "0123456789ab+dirty" in figure._suptitle.get_text()
    for ax in figure.axes:
        marks = [t.get_text() for t in ax.texts if "not measured" in t.get_text()]
        assert sorted(marks) == sorted(f"{impl}: not measured" for impl in impls)


def test_headline_warns_about_noise_and_load():
    rows = [
        {"case": "c", "dtype": "fp32", "mode": "fwd", "impl": "carafe_cupy", "status": "ok",
         "median_ms": 1.0, "spread": 3.0, "noisy": True},
        {"case": "c", "dtype": "fp32", "mode": "fwd", "impl": "unfold_lowres", "status": "ok",
         "median_ms": 5.0, "spread": 1.1, "noisy": False},
        {"case": "c", "dtype": "fp32", "mode": "fwd", "impl": "unfold_upsampled",
         "status": "skipped (whole-run budget 45 s spent)"},
    ]  # fmt: skip
    lines = bench.headline(rows, bench.load_warnings(9.0, 9.0, own_threads=2))
    assert lines[0].startswith("2 of 3 rows measured; NOT MEASURED: 1 (1 whole-run budget")
    assert any("1 of 2 rows are noisy" in line for line in lines)
    assert sum("load average was 9.00" in line for line in lines) == 2
    assert "fastest unfold port (unfold_lowres) 5.0 ms: 5.0x" in lines[-1]


def test_contention_mode_prints_slowdowns(tmp_path):
    result = _bench_cli(
        "--contention", "--shapes", "quick-13x21", "--impls", "carafe_cupy,unfold_lowres",
        "--reps", "1", "--out", str(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# Slowdown with 1 busy process(es)" in result.stdout
    rows = json.loads((tmp_path / "contention.json").read_text())
    assert {(r["impl"], r["mode"]) for r in rows} == {
        (impl, mode) for impl in ("carafe_cupy", "unfold_lowres") for mode in ("fwd", "fwd+bwd")
    }
    for row in rows:
        assert row["status"] == "ok" and row["slowdown"] > 0  # a figure, not a speed target


peers = _load("carafe_bench_cpu_peers", BENCH / "bench_cpu_peers.py")
cpu_peers = sys.modules["cpu_peers"]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_peer_shift_loop_matches_naive_loop_and_its_gradients(cfg):
    feat, masks = _inputs(cfg, seed=4)
    k, g, s = cfg[4:]
    want = naive_carafe(feat.numpy(), masks.numpy(), k, g, s)
    f, m = feat.clone().requires_grad_(True), masks.clone().requires_grad_(True)
    got = cpu_peers.carafe_shift_upsampled(f, m, k, g, s)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn(got.shape, generator=torch.Generator().manual_seed(5), dtype=got.dtype)
    f2, m2 = feat.clone().requires_grad_(True), masks.clone().requires_grad_(True)
    expected = torch.autograd.grad(baselines.carafe_shift(f2, m2, k, g, s), (f2, m2), grad_out)
    for a, b in zip(torch.autograd.grad(got, (f, m), grad_out), expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_peer_flops_count_a_multiply_add_per_tap_channel_and_pixel():
    n, c, h, w, k, s = 2, 8, 3, 5, 3, 2
    per_pass = 2 * n * c * (h * s) * (w * s) * k * k
    assert cpu_peers.carafe_flops(n, c, h, w, k, s, "fwd") == per_pass
    assert cpu_peers.carafe_flops(n, c, h, w, k, s, "fwd-grad") == per_pass
    assert cpu_peers.carafe_flops(n, c, h, w, k, s, "fwd+bwd") == 3 * per_pass


def test_peers_check_leaves_a_wrong_peer_untimed():
    import carafe_cupy

    case = bench.Case("t", 1, 4, 3, 3, k=3, g=2, s=2)
    ins = peers._inputs(case, torch.float32)

    def off_by_a_tap(f, m, k, g, s):  # the unfold port with one mask channel dropped
        m = m.clone()
        m[:, 0] = 0
        return baselines.carafe_unfold_lowres(f, m, k, g, s)

    impls = {"carafe_cupy": carafe_cupy.carafe, "unfold_eager": off_by_a_tap}
    rows = peers.warm_up_and_check(impls, case, ins, budget_s=60)
    assert rows[("carafe_cupy", "fwd")]["check"] == "reference"
    for mode in ("fwd", "fwd+bwd"):
        assert rows[("unfold_eager", mode)]["status"].startswith("wrong result: ")
    peers.time_rounds(impls, case, ins, rows, reps=2)
    assert "min_ms" not in rows[("unfold_eager", "fwd")]
    assert rows[("carafe_cupy", "fwd")]["reps"] == 2


def test_bench_peers_runs_every_peer_and_mode_side_by_side(tmp_path):
    """`bench --peers` at a tiny shape, the compiled peers through dynamo without code
    generation: behaviour only (every row timed, checked, with memory and the speed-ups)."""
    out = tmp_path / "peers"
    result = _bench_cli(
        "--peers", "--shape", "1,4,3,4", "--k", "3", "--groups", "2", "--reps", "2",
        "--compile-backend", "eager", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "results.json").read_text())
    rows = {(r["impl"], r["mode"]): r for r in report["rows"]}
    compiled = {"shift_compiled", "unfold_compiled"}
    assert set(rows) == {
        (impl, mode)
        for impl in ("carafe_cupy", *compiled, "unfold_eager")
        for mode in ("fwd", "fwd-grad", "fwd+bwd")
        if mode != "fwd-grad" or impl in compiled
    }
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["reps"] == 2 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert row["check"] == ("reference" if row["impl"] == "carafe_cupy" else "ok")
        if sys.platform.startswith("linux"):
            assert isinstance(row["peak_mem_bytes"], int)
    assert {(r["peer"], r["mode"], r["on"]) for r in report["ratios"]} == {
        (peer, mode, on)
        for peer in ("shift_compiled", "unfold_compiled", "unfold_eager")
        for mode in ("fwd", "fwd+bwd")
        for on in ("median", "min")
    }
    assert report["gemm"]["gflops"] > 0 and report["copy_gbps"] > 0
    assert report["floor"]["fwd+bwd"]["flops"] == 3 * report["floor"]["fwd"]["flops"]
    from carafe_cupy._torch.common import backend_name

    assert report["meta"]["cpu_path"] == backend_name(torch.device("cpu"))
    md = (out / "results.md").read_text()
    assert md == result.stdout.split("\nresults written to")[0]
    assert "command: `python -m carafe_cupy bench --peers --shape 1,4,3,4" in md
    for label in cpu_peers.PEER_LABELS.values():
        assert f"| {label} |" in md
    assert "vs unfold port, eager, fwd+bwd: " in md and "% of it (median)" in md


@pytest.mark.parametrize(
    "args, named",
    [
        (["--k", "4"], "--k"),
        (["--groups", "3"], "--groups"),
        (["--impls", "unfold_eager"], "--impls"),
    ],
)
def test_bench_peers_refuses_bad_arguments_naming_them(args, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        peers.main(["--shape", "1,4,3,4", *args])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert named in error and args[1] in error
