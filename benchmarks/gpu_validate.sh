#!/usr/bin/env bash
# One-shot validation on a GPU machine: versions, `carafe_cupy info`, GPU tests, the whole
# test suite, compute-sanitizer (memcheck, racecheck, synccheck, initcheck) on a small
# forward+backward, the full benchmark, and the cost model's calibration (ncu on every kernel
# against the model's prediction for this commit, and mmcv's CARAFE as a baseline).
# Installs nothing; runs from the working tree.
#
#   benchmarks/gpu_validate.sh [--dry-run] [--quick] [--part PART] [--out DIR]
#
#   --dry-run  no GPU needed: runs what a CPU machine can (versions, info, tests, a quick CPU
#              benchmark, the model's prediction) and only prints the GPU commands.
#   --quick    benchmark with --quick instead of the full shape list.
#   --part P   all (default), or one part, each well under 10 minutes on an H100:
#              checks (versions, info, GPU tests, sanitizers), tests (whole suite),
#              bench, calibrate (model, ncu, mmcv, model-against-measured table).
#   --out DIR  results directory (default benchmarks/results/<date>-<gpu-slug>/).
#
# Results (at most 8 files): summary.md, steps.log (every step's output), first_gpu.json (what
# the GPU showed about the runtime: CUDA headers, the binary and its options, registers and
# spills, subnormals, the target; also a section of summary.md), the benchmark's
# results.json / results.md / plot, calibration.json and calibration.md. Parts run one
# after another add to the same summary. Every step continues past failures; the exit status
# is non-zero if any step failed.
#
# Calibration needs ncu (Nsight Compute, with access to the GPU's counters) and, for the
# mmcv baseline, mmcv's CARAFE sources in benchmarks/third_party/mmcv (an ignored folder;
# benchmarks/mmcv_carafe.py says how to fetch them); nvcc builds them on the GPU machine.
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}

DRY=0
QUICK=0
OUT=""
PART=all
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    --part) PART=$2; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

case "$PART" in
  all|checks|tests|bench|calibrate) ;;
  *) echo "--part must be all, checks, tests, bench or calibrate, got '$PART'" >&2; exit 2 ;;
esac
want() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }

slug() { tr '[:upper:]' '[:lower:]' | sed -e 's/([rR])\|(tm)//g' -e 's/[^a-z0-9]\+/-/g' -e 's/^-//' -e 's/-$//'; }

GPU_NAME=""
if command -v nvidia-smi >/dev/null 2>&1; then
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
fi
TORCH_CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)

if [ -z "$GPU_NAME" ] || [ "$TORCH_CUDA" != "1" ]; then
  echo "No usable CUDA GPU: nvidia-smi name='${GPU_NAME:-none}', torch.cuda.is_available()=$TORCH_CUDA." >&2
  if [ "$DRY" != 1 ]; then
    echo "GPU validation NOT run. Use --dry-run to exercise this script on a CPU machine." >&2
    exit 3
  fi
  echo "--dry-run: running the CPU-capable steps only; GPU steps are printed, not run." >&2
  SLUG="dry-run-$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | slug)"
  SLUG=${SLUG%-}
  [ "$SLUG" = "dry-run" ] && SLUG="dry-run-cpu"
else
  SLUG=$(printf '%s' "$GPU_NAME" | slug)
fi

DATE=$(date +%Y-%m-%d)
RES=${OUT:-"$ROOT/benchmarks/results/$DATE-$SLUG"}
mkdir -p "$RES" || exit 2
SUMMARY="$RES/summary.md"
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$COMMIT" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  COMMIT="$COMMIT+dirty"
fi

LOG="$RES/steps.log"
if [ ! -f "$SUMMARY" ]; then
  { echo "# GPU validation summary"; echo; echo "- gpu: ${GPU_NAME:-none}"; } >"$SUMMARY"
fi
{
  echo
  echo "## part: $PART ($(date -Iseconds))"
  echo
  echo "- commit: \`$COMMIT\`"
  echo "- mode: $([ "$DRY" = 1 ] && echo dry-run || echo full)"
  echo
  echo "| step | status |"
  echo "|---|---|"
} >>"$SUMMARY"

FAILED=()
FIRST_GPU_MD=$(mktemp)

# step NAME [allowed-exit-codes...] -- COMMAND...: log to steps.log, record status, go on.
step() {
  local name=$1; shift
  local ok_codes=" 0 "
  while [ "$1" != "--" ]; do ok_codes+="$1 "; shift; done
  shift
  echo
  echo "===== $name: $*"
  { echo; echo "===== $name"; echo "\$ $*"; echo "# $(date -Iseconds)"; } >>"$LOG"
  "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "# exit status $rc" >>"$LOG"
  if [[ "$ok_codes" == *" $rc "* ]]; then
    echo "| $name | ok (rc $rc) |" >>"$SUMMARY"
  else
    echo "| $name | FAILED (rc $rc) |" >>"$SUMMARY"
    FAILED+=("$name")
  fi
}

# A step that needs the GPU: printed in a dry run, run otherwise.
gpu_step() {
  local name=$1
  if [ "$DRY" = 1 ]; then
    shift
    while [ "$1" != "--" ]; do shift; done
    shift
    echo
    echo "===== $name (dry run, not run): $*"
    { echo; echo "===== $name (dry run, not run)"; echo "\$ $*"; } >>"$LOG"
    echo "| $name | not run (dry run) |" >>"$SUMMARY"
    return
  fi
  step "$@"
}

versions() {
  echo "commit: $COMMIT"
  echo "date: $(date -Iseconds)"
  echo "host: $(uname -a)"
  "$PY" - <<'EOF'
import platform
import torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import cupy
    print("cupy", cupy.__version__)
    print("cuda runtime", cupy.cuda.runtime.runtimeGetVersion())
except Exception as exc:
    print("cupy not importable:", exc)
try:
    import carafe_cupy
    print("carafe_cupy", carafe_cupy.__version__, carafe_cupy.__file__)
except Exception as exc:
    print("carafe_cupy not importable:", exc)
if torch.cuda.is_available():
    print("torch device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
EOF
  local rc=$?
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
  else
    echo "nvidia-smi: not found"
  fi
  if command -v compute-sanitizer >/dev/null 2>&1; then
    compute-sanitizer --version | tail -n1
  else
    echo "compute-sanitizer: not found"
  fi
  return $rc
}

SMOKE=("$PY" benchmarks/sanitize_smoke.py --device cuda --dtypes fp32,fp16)
SAN=(compute-sanitizer --error-exitcode 97 --print-limit 50)

if want checks; then
  step versions -- versions
  step info -- "$PY" -m carafe_cupy info
  # rc 5 = no tests collected: fine on a CPU dry run, a failure on a GPU machine.
  if [ "$DRY" = 1 ]; then
    step pytest_gpu 5 -- "$PY" -m pytest tests -m gpu -q -rs
  else
    step pytest_gpu -- "$PY" -m pytest tests -m gpu -q -rs
  fi
  # CUDA graphs (torch.cuda.graph, reduce-overhead) and DDP on GPUs (NCCL with 2+ GPUs, gloo),
  # on their own so their result shows in the summary; they are in pytest_gpu too.
  gpu_step pytest_graphs_ddp -- "$PY" -m pytest tests/test_distributed_and_graphs.py -m gpu -q -rs
  # a V100 (sm_70) with the cuda13 extra must fall back with one warning naming cuda12
  gpu_step nvrtc_target_check -- "$PY" -c 'import warnings, torch, carafe_cupy
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime
for index in range(torch.cuda.device_count()):
    reason = _cupy_runtime.gpu_kernels_unavailable_reason(index)
    print(f"cuda:{index}", torch.cuda.get_device_capability(index), reason or "kernels usable")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    x = torch.randn(1, 4, 3, 3, device="cuda")
    print(carafe_cupy.carafe(x, torch.rand(1, 9, 6, 6, device="cuda"), 3, 1, 2).shape)
print("warnings:", [str(w.message) for w in caught])'
  # The runtime on this GPU: compiles and loads without CUDA headers, loads the binaries the
  # offline checks read (no spills, subnormals kept) for the target NVRTC builds here.
  gpu_step first_gpu_checks -- "$PY" benchmarks/first_gpu_checks.py \
    --json "$RES/first_gpu.json" --markdown "$FIRST_GPU_MD"
  # No caching allocator under memcheck: out-of-bounds accesses into a neighbouring tensor of
  # the same pool block would otherwise go unseen.
  gpu_step sanitize_memcheck -- env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "${SAN[@]}" --tool memcheck --leak-check no "${SMOKE[@]}"
  gpu_step sanitize_racecheck -- "${SAN[@]}" --tool racecheck --racecheck-report all "${SMOKE[@]}"
  gpu_step sanitize_synccheck -- "${SAN[@]}" --tool synccheck "${SMOKE[@]}"
  # initcheck looks at every kernel; restrict it to ours so torch's internal scratch buffers
  # (allocated but legitimately not all written) do not drown the report.
  gpu_step sanitize_initcheck -- "${SAN[@]}" --tool initcheck \
    --kernel-name "${CARAFE_KERNEL_FILTER:-kns=carafe}" "${SMOKE[@]}"

fi
if want tests; then
  step pytest_all -- "$PY" -m pytest tests -q -rs
fi
if want bench; then
  step bench_first_call_and_dlpack -- "$PY" benchmarks/bench_startup_dlpack.py
  if [ "$DRY" = 1 ]; then
    step bench -- "$PY" benchmarks/bench_carafe.py --quick --device cpu --out "$RES" --no-progress
  elif [ "$QUICK" = 1 ]; then
    step bench -- "$PY" benchmarks/bench_carafe.py --quick --device cuda --out "$RES" --no-progress
  else
    step bench -- "$PY" benchmarks/bench_carafe.py --device cuda --out "$RES" --no-progress
  fi

fi
if want calibrate; then
  # The model's prediction for this commit, ncu on every kernel at 52x84 and 64x64 (metrics
  # matching the model's), mmcv's CARAFE built from its sources, and the comparison table.
  NCU_TMP=$(mktemp -d)
  NCU_METRICS=$("$PY" -c 'import sys; sys.path.insert(0, "benchmarks"); import calibrate; print(",".join(calibrate.NCU_METRICS.values()))')
  step calibrate_model -- "$PY" benchmarks/calibrate.py model --out "$RES" \
    --max-blocks "$([ "$DRY" = 1 ] && echo 16 || echo 64)"
  for shape in 2,256,52,84 2,256,64,64; do
    gpu_step "ncu_${shape//,/x}" -- ncu --csv --print-units base --metrics "$NCU_METRICS" \
      --kernel-name regex:carafe --log-file "$NCU_TMP/$shape.csv" \
      "$PY" benchmarks/calibrate.py target --shape "$shape"
  done
  gpu_step mmcv_baseline -- "$PY" benchmarks/calibrate.py mmcv --out "$RES"
  step calibrate_table -- "$PY" benchmarks/calibrate.py table --out "$RES" \
    --ncu "$NCU_TMP/2,256,52,84.csv" "$NCU_TMP/2,256,64,64.csv"
  rm -rf "$NCU_TMP"
fi

[ -s "$FIRST_GPU_MD" ] && cat "$FIRST_GPU_MD" >>"$SUMMARY"
rm -f "$FIRST_GPU_MD"
{
  echo
  if [ ${#FAILED[@]} -eq 0 ]; then
    echo "**Result: all steps passed.**"
  else
    echo "**Result: FAILED steps: ${FAILED[*]}**"
  fi
  [ "$DRY" = 1 ] && echo && echo "Dry run: no GPU; GPU steps were not run, so this is NOT a validation."
} >>"$SUMMARY"

echo
cat "$SUMMARY"
echo
echo "results: $RES"
if [ ${#FAILED[@]} -ne 0 ]; then
  exit 1
fi
if [ "$DRY" = 1 ]; then
  echo "DRY RUN ONLY: the CPU-capable steps passed; the GPU has NOT been validated."
fi
exit 0
