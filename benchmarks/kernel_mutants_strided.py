"""Mutants of the general kernels' stride and dilation indexing (cuda_src/carafe.cu),
for benchmarks/mutate_kernels.py: name -> (pattern, replacement)."""

from __future__ import annotations

STRIDE_DILATION = {
    "general-forward-ignores-stride": (
        r"y / g\.scale_factor \* g\.stride - radius \* g\.dilation",
        "y / g.scale_factor - radius * g.dilation",
    ),
    "general-forward-ignores-column-dilation": (
        r"left \+ j \* g\.dilation",
        "left + j",
    ),
    "general-center-count-floors": (
        r"return \(size \+ stride - 1\) / stride;",
        "return size / stride;",
    ),
    "general-grad-features-skips-divisibility": (
        r"if \(remainder == 0\) return tap;",
        "return tap;",
    ),
    "general-grad-features-center-bound-off-by-one": (
        r"center_x >= center_cols\) continue;",
        "center_x > center_cols) continue;",
    ),
    "general-grad-features-dilation-sign": (
        r"reach = position \+ radius \* dilation;",
        "reach = position - radius * dilation;",
    ),
    "general-grad-features-tap-step-ignores-gcd": (
        r"t / greatest_common_divisor\(dilation, t\)",
        "t",
    ),
    "general-grad-features-center-step": (
        r"dilation \* tap_step / t,",
        "tap_step,",
    ),
    "general-grad-masks-row-without-dilation": (
        r"\(tap / g\.kernel_size - radius\) \* g\.dilation",
        "(tap / g.kernel_size - radius)",
    ),
    "general-grad-masks-column-without-stride": (
        r"x / g\.scale_factor \* g\.stride \+",
        "x / g.scale_factor +",
    ),
}
