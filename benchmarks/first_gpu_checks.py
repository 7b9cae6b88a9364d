"""What the first GPU shows about the runtime: no CUDA headers needed, the binary that runs
is the binary the offline checks read (and keeps subnormals), and the target NVRTC builds.

    python benchmarks/first_gpu_checks.py [--device 0] [--json PATH] [--markdown PATH]

Prints a markdown section (also written to --markdown: gpu_validate.sh appends it to
summary.md) and writes the findings as JSON (--json). Exit status 1 if a check fails,
3 without a usable GPU.

1. CUDA headers: whether CuPy finds a toolkit; the kernels must compile and load either way.
2. The binary: the target and options, registers and spills of every kernel loaded for this
   GPU from the same binaries the offline checks read, and fp32 / bf16 subnormal inputs
   passed through a general (k = 1) and a tiled (k = 3) kernel unflushed.
3. The target: compute capability, NVRTC version, cubin or PTX, and whether it loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def headers_finding(cupy) -> dict:
    try:
        root = cupy.cuda.get_cuda_path()
    except Exception as error:  # CuPy versions differ in where this lives
        root = f"unknown ({type(error).__name__})"
    found = bool(root) and Path(str(root), "include", "cuda_runtime.h").is_file()
    return {"cupy_cuda_path": root, "cuda_runtime_h_found": found}


def binary_finding(device: int) -> dict:
    from carafe_cupy._kernels import sources
    from carafe_cupy._profile.static import parse_ptxas
    from carafe_cupy._runtime import cupy_runtime, gpu_checks

    cupy = cupy_runtime._import_cupy()
    target = gpu_checks.compile_target(cupy, device)
    modules, registers, spills = {}, {}, {}
    for module in sources.all_module_names():
        binary = cupy_runtime.module_binary(target, module)
        modules[module] = hashlib.sha256(binary.image).hexdigest()[:16]
        for name, usage in parse_ptxas(binary.log).items():
            registers[name] = usage.registers
            if usage.spill_stores + usage.spill_loads:
                spills[name] = usage.spill_stores + usage.spill_loads
    return {
        "target": target.name,
        "binary": target.describe(),
        "options": list(sources.NVRTC_OPTIONS),
        "module_sha256": modules,
        "registers": registers,  # empty for PTX: the driver allocates them at load
        "spilling_kernels": spills,
    }


def subnormal_finding(device: int) -> dict:
    import torch

    import carafe_cupy

    cuda = torch.device("cuda", device)
    found = {}
    for dtype in (torch.float32, torch.bfloat16):
        tiny = torch.finfo(dtype).tiny  # smallest normal: subnormals lie below it
        features = torch.full((1, 2, 4, 4), tiny / 4, dtype=dtype, device=cuda)
        for k in (1, 3):
            masks = torch.zeros(1, k * k, 4, 4, dtype=dtype, device=cuda)
            masks[:, k * k // 2] = 1  # the centre tap: output = features
            output = carafe_cupy.carafe(features, masks, k, 1, 1)
            kept = bool(torch.equal(output, features))
            found[f"{str(dtype).replace('torch.', '')} k={k}"] = "kept" if kept else "FLUSHED"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    options = parser.parse_args()
    from carafe_cupy._runtime import cupy_runtime, gpu_checks

    if not cupy_runtime.cupy_importable():
        print("CuPy is not importable: no GPU checks", file=sys.stderr)
        return 3
    cupy = cupy_runtime._import_cupy()
    index = options.device
    try:
        visible = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver
        visible, reason = 0, f"{type(error).__name__}: {error}"
    else:
        reason = f"{visible} GPU(s) visible"
    if index >= visible:
        print(f"no cuda:{index} ({reason}): no GPU checks", file=sys.stderr)
        return 3
    findings: dict = {
        "device": index,
        "compute_capability": gpu_checks.compute_capability(cupy, index),
        "nvrtc": ".".join(str(v) for v in gpu_checks.nvrtc_version(cupy)),
        "headers": headers_finding(cupy),
        "kernels": cupy_runtime.device_kernels_line(index),
    }
    failed = findings["kernels"].startswith("unavailable")
    if not failed:
        findings.update(binary_finding(index))
        findings["subnormals"] = subnormal_finding(index)
        failed = bool(findings["spilling_kernels"]) or "FLUSHED" in findings["subnormals"].values()
    lines = [
        "",
        f"## first GPU checks (cuda:{index}, sm_{findings['compute_capability']})",
        "",
        f"- NVRTC {findings['nvrtc']}; CuPy finds CUDA headers: "
        f"{findings['headers']['cuda_runtime_h_found']} ({findings['headers']['cupy_cuda_path']})",
        f"- kernels: {findings['kernels']}",
    ]
    if "target" in findings:
        lines += [
            f"- options: `{' '.join(findings['options'])}`",
            f"- spilling kernels: {findings['spilling_kernels'] or 'none'}",
            "- subnormals: "
            + ", ".join(f"{case} {verdict}" for case, verdict in findings["subnormals"].items()),
        ]
    lines.append(f"- result: {'FAILED' if failed else 'ok'}")
    print("\n".join(lines))
    if options.markdown is not None:
        options.markdown.write_text("\n".join(lines) + "\n")
    if options.json is not None:
        options.json.write_text(json.dumps(findings, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
