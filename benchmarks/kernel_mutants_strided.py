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
        r"\(tap / kernel_size - radius\) \* g\.dilation",
        "(tap / kernel_size - radius)",
    ),
    "general-grad-masks-column-without-stride": (
        r"center_x = x / g\.scale_factor \* g\.stride;",
        "center_x = x / g.scale_factor;",
    ),
}

# The strips of channels (forward, grad_features) and of taps (grad_masks) a thread takes.
STRIPS = {
    "general-channel-strip-offset-ignores-width": (
        r"strip % strips_per_group \* WIDTH;",
        "strip % strips_per_group;",
    ),
    "general-channel-strip-runs-past-group-end": (
        r"left < WIDTH \? left : WIDTH\}",
        "WIDTH}",
    ),
    "general-forward-strip-reads-first-channel": (
        r"load\(feature \+ cc \* feature_strides\.c\)",
        "load(feature)",
    ),
    "general-grad-features-strip-reads-first-channel": (
        r"load\(grad \+ channel \* grad_output_strides\.c\)",
        "load(grad)",
    ),
    "general-grad-features-stores-past-strip": (
        r"if \(cc <= last\) storage",
        "if (cc <= GRAD_FEATURES_CHANNEL_STRIP) storage",
    ),
    "general-grad-masks-tap-strip-start": (
        r"\* TAP_STRIP;\n",
        ";\n",
    ),
    "general-grad-masks-strip-skips-outside-taps-wrongly": (
        r"if \(inside\[tt\]\) sum",
        "if (inside[0]) sum",
    ),
    "general-grad-masks-channel-walk": (
        r"feature_plane \+= feature_strides\.c;",
        "feature_plane += feature_strides.h;",
    ),
}
