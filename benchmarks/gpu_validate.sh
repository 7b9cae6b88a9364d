#!/usr/bin/env bash
# One-shot validation on a GPU machine: versions, `carafe_cupy info`, GPU tests, the whole
# test suite, compute-sanitizer (memcheck, racecheck, synccheck, initcheck) on a small
# forward+backward, and the full benchmark. Installs nothing; runs from the working tree.
#
#   benchmarks/gpu_validate.sh [--dry-run] [--quick] [--out DIR]
#
#   --dry-run  no GPU needed: runs what a CPU machine can (versions, info, tests, a quick CPU
#              benchmark) and only prints the sanitizer commands.
#   --quick    benchmark with --quick instead of the full shape list.
#   --out DIR  results directory (default benchmarks/results/<date>-<gpu-slug>/).
#
# Every step logs to <results>/<step>.log and the run continues past failures; the exit status
# is non-zero if any step failed, and <results>/summary.md lists each step's status.
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}

DRY=0
QUICK=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

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

{
  echo "# GPU validation summary"
  echo
  echo "- date: $(date -Iseconds)"
  echo "- commit: \`$COMMIT\`"
  echo "- gpu: ${GPU_NAME:-none}"
  echo "- mode: $([ "$DRY" = 1 ] && echo dry-run || echo full)"
  echo
  echo "| step | status | log |"
  echo "|---|---|---|"
} >"$SUMMARY"

FAILED=()

# step NAME [allowed-exit-codes...] -- COMMAND...: log to $RES/NAME.log, record status, go on.
step() {
  local name=$1; shift
  local ok_codes=" 0 "
  while [ "$1" != "--" ]; do ok_codes+="$1 "; shift; done
  shift
  local log="$RES/$name.log"
  echo
  echo "===== $name: $*"
  { echo "\$ $*"; echo "# $(date -Iseconds)"; } >"$log"
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "# exit status $rc" >>"$log"
  if [[ "$ok_codes" == *" $rc "* ]]; then
    echo "| $name | ok (rc $rc) | $name.log |" >>"$SUMMARY"
  else
    echo "| $name | FAILED (rc $rc) | $name.log |" >>"$SUMMARY"
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
    echo "\$ $*" >"$RES/$name.log"
    echo "| $name | not run (dry run) | $name.log |" >>"$SUMMARY"
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

step versions -- versions
step info -- "$PY" -m carafe_cupy info
# rc 5 = no tests collected: fine on a CPU dry run, a failure on a GPU machine.
if [ "$DRY" = 1 ]; then
  step pytest_gpu 5 -- "$PY" -m pytest tests -m gpu -q -rs --junitxml "$RES/pytest_gpu.xml"
else
  step pytest_gpu -- "$PY" -m pytest tests -m gpu -q -rs --junitxml "$RES/pytest_gpu.xml"
fi
# CUDA graphs (torch.cuda.graph, reduce-overhead) and DDP on GPUs (NCCL with 2+ GPUs, gloo),
# on their own so their result shows in the summary; they are in pytest_gpu too.
gpu_step pytest_graphs_ddp -- "$PY" -m pytest tests/test_distributed_and_graphs.py -m gpu -q -rs \
  --junitxml "$RES/pytest_graphs_ddp.xml"
# a V100 (sm_70) with the cuda13 extra must fall back with one warning naming cuda12
gpu_step nvrtc_target_check -- "$PY" -c 'import warnings, torch, carafe_cupy
from carafe_cupy import _launch
for index in range(torch.cuda.device_count()):
    reason = _launch.gpu_kernels_unavailable_reason(index)
    print(f"cuda:{index}", torch.cuda.get_device_capability(index), reason or "kernels usable")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    x = torch.randn(1, 4, 3, 3, device="cuda")
    print(carafe_cupy.carafe(x, torch.rand(1, 9, 6, 6, device="cuda"), 3, 1, 2).shape)
print("warnings:", [str(w.message) for w in caught])'
step pytest_all -- "$PY" -m pytest tests -q -rs --junitxml "$RES/pytest_all.xml"
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

step bench_first_call_and_dlpack -- "$PY" benchmarks/bench_startup_dlpack.py
if [ "$DRY" = 1 ]; then
  step bench -- "$PY" benchmarks/bench_carafe.py --quick --device cpu --out "$RES" --no-progress
elif [ "$QUICK" = 1 ]; then
  step bench -- "$PY" benchmarks/bench_carafe.py --quick --device cuda --out "$RES" --no-progress
else
  step bench -- "$PY" benchmarks/bench_carafe.py --device cuda --out "$RES" --no-progress
fi

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
