"""The Python mutants of the host path: the packed kernel arguments, the driver
launch, the prepared calls, the eager fast path and the checks cached per call
signature. Rows of (name, file under carafe_cupy/, pattern, replacement), made into
``PythonMutant`` objects by ``python_mutants.py``.

Left out as equivalent: ``launch`` picking the runtime again from the environment
when a prepared call hands it one (on the fast path the prepared call's choice, by
the signature's device, is the environment's)."""

from __future__ import annotations

LAUNCH = "_runtime/launch.py"
ARGUMENTS, CUPY_RUNTIME = "_runtime/arguments.py", "_runtime/cupy_runtime.py"
EAGER, CHECKED = "_torch/eager.py", "_torch/checked_calls.py"
ENV = "_core/env.py"

HOST_MUTANTS = (
    # ---- the packed arguments and the driver launch
    (
        "prepared-drops-device",
        LAUNCH,
        r"pick\(pointers\)\),\n(\s+)shared_mem,\n(\s+)device,",
        r"pick(pointers)),\n\g<1>shared_mem,\n\g<2>0,",
    ),
    (
        "prepared-drops-stream",
        LAUNCH,
        r"pick\(pointers\)\),\n(\s+)shared_mem,\n(\s+)device,\n(\s+)stream,",
        r"pick(pointers)),\n\g<1>shared_mem,\n\g<2>device,\n\g<3>0,",
    ),
    (
        "prepared-null-slot-gets-a-pointer",
        LAUNCH,
        r"-1 if index is None else index",
        r"0 if index is None else index",
    ),
    (
        "packed-pointers-not-written",
        ARGUMENTS,
        r"words\[self\._pointer_slots\] = pointers",
        r"pass",
    ),
    (
        "packed-negative-words-unsigned",
        ARGUMENTS,
        r"np\.uint64\(word\)\.view\(np\.int64\)",
        r"np.int64(word & (1 << 63) - 1)",
    ),
    (
        "driver-launch-default-stream",
        CUPY_RUNTIME,
        r"shared_mem, stream, params, 0\)",
        r"shared_mem, 0, params, 0)",
    ),
    (
        "driver-launch-device-left-switched",
        CUPY_RUNTIME,
        r"finally:\n(\s+)if previous != device:\n\s+set_device\(previous\)",
        r"finally:\n\1pass",
    ),
    (
        "driver-launch-on-current-device",
        CUPY_RUNTIME,
        r"if previous != device:\n(\s+)set_device\(device\)",
        r"if False:\n\1set_device(device)",
    ),
    (
        "launchable-kernels-shared-across-devices",
        CUPY_RUNTIME,
        r"self\._launchable\[\(device, module_name, kernel_name\)\] = kernel",
        r"self._launchable[(device, module_name, kernel_name)] = kernel\n"
        r"        self._launchable[(1 - device, module_name, kernel_name)] = kernel",
    ),
    # ---- the eager fast path and the checks cached per signature
    (
        "fast-path-under-dispatch-modes",
        EAGER,
        r"or _dispatch_modes\(\)\n",
        r"\n",
    ),
    ("fast-path-under-autocast", EAGER, r"or _any_autocast\(\)\n", r"\n"),
    (
        "fast-path-under-functorch",
        EAGER,
        r"or _functorch_transform\(\) is not None\n",
        r"\n",
    ),
    (
        "fast-backward-ignores-create-graph",
        EAGER,
        r"torch\.is_grad_enabled\(\)\n(\s+)or type\(grad_output\)",
        r"False\n\1or type(grad_output)",
    ),
    (
        "fast-path-ignores-alignment",
        EAGER,
        r"if misaligned % _ALIGNMENT else None",
        r"if False else None",
    ),
    (
        "fast-output-ignores-channels-last",
        EAGER,
        r"if checked\.memory_format is None:",
        r"if True:",
    ),
    (
        "environment-reader-keeps-its-first-value",
        ENV,
        r"if stored is not seen:",
        r"if seen is _UNREAD:",
    ),
    (
        "checked-signature-ignores-strides",
        CHECKED,
        r"features\.shape,\n(\s+)features\.stride\(\),",
        r"features.shape,",
    ),
    (
        "checked-grad-output-unchecked",
        CHECKED,
        r"_validate\.check_grad_output_shape\(grad_output\.shape, checked\.geometry\)",
        r"pass",
    ),
    (
        "prepared-call-runtime-always-the-gpus",
        LAUNCH,
        r"runtime = _SIMULATED if self\.simulated else _cupy_runtime\.get_runtime\(\)",
        r"runtime = _cupy_runtime.get_runtime()",
    ),
    (
        "prepared-call-runtime-always-the-simulator",
        LAUNCH,
        r"runtime = _SIMULATED if self\.simulated else _cupy_runtime\.get_runtime\(\)",
        r"runtime = _SIMULATED",
    ),
    (
        "fast-forward-memory-checked-once",
        CHECKED,
        r"if capacity != checked\.forward_capacity:",
        r"if checked.forward_capacity is _UNCHECKED:",
    ),
    (
        "fast-backward-memory-unchecked",
        CHECKED,
        r"_cpu_path\.check_memory\(checked\.geometry, features\.dtype, device, backward=True\)",
        r"pass",
    ),
)
