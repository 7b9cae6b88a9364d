"""Mutants of the numerics: fp16 / bf16 conversion thresholds and rounding, the
fused softmax's maximum, and the width of the stride products (the fused
logit tap step above all), for benchmarks/mutate_kernels.py.

Each entry is (name, files, pattern, replacement, occurrence), the fields of
kernel_mutants.Mutant; files are in cuda_src/.
"""

from __future__ import annotations

COMMON = ("carafe_common.cuh",)
GENERAL = ("carafe.cu",)
TILED = (
    "carafe_tiled.cuh",
    "carafe_tiled_forward.cuh",
    "carafe_tiled_grad_masks.cuh",
    "carafe_tiled_grad_features.cuh",
)
FORWARD = ("carafe_tiled_forward.cuh",)
GRAD_MASKS = ("carafe_tiled_grad_masks.cuh",)
GRAD_FEATURES = ("carafe_tiled_grad_features.cuh",)
# the softmax's running maximum: in softmax_in_place (0) and the grad_features normaliser (1)
RUNNING_MAX = (
    r"for \(int t = 1; t < TAPS; \+\+t\) largest = values\[t\] > largest \? values\[t\] : largest;"
)

CONVERSIONS = (
    # 65519.996 (below the midpoint 65520) goes to Inf
    (
        "fp16-overflow-threshold-one-ulp-low",
        COMMON,
        r"magnitude >= 0x477FF000u",
        "magnitude >= 0x477FEFFFu",
        0,
    ),
    # past 65536 the rounding path carries into the exponent's NaN patterns
    (
        "fp16-overflow-threshold-past-65536",
        COMMON,
        r"magnitude >= 0x477FF000u",
        "magnitude >= 0x47802000u",
        0,
    ),
    (
        "fp16-subnormal-boundary-a-binade-low",
        COMMON,
        r"magnitude < 0x38800000u",
        "magnitude < 0x38000000u",
        0,
    ),
    # (2**-25, 1.5 * 2**-25) rounds up to the smallest subnormal, not to zero
    (
        "fp16-underflow-threshold-high",
        COMMON,
        r"magnitude < 0x33000000u",
        "magnitude < 0x33400000u",
        0,
    ),
    (
        "fp16-subnormal-ties-up",
        COMMON,
        r"remainder > halfway \|\| \(remainder == halfway && \(result & 1u\)\)",
        "remainder >= halfway",
        0,
    ),
    (
        "fp16-ties-down",
        COMMON,
        r"remainder > 0x1000u \|\| \(remainder == 0x1000u && \(result & 1u\)\)",
        "remainder > 0x1000u",
        0,
    ),
    (
        "fp16-nan-narrowed-to-infinity",
        COMMON,
        r"\(magnitude > 0x7F800000u \? 0x200u : 0u\)",
        "0u",
        0,
    ),
    (
        "fp16-nan-widened-to-infinity",
        COMMON,
        r"sign \| 0x7F800000u \| \(mantissa << 13\)",
        "sign | 0x7F800000u",
        0,
    ),
    ("bf16-ties-up", COMMON, r"0x7FFFu \+ \(\(x >> 16\) & 1u\)", "0x8000u", 0),
    ("bf16-ties-down", COMMON, r"0x7FFFu \+ \(\(x >> 16\) & 1u\)", "0x7FFFu", 0),
    # a NaN whose payload is all in the low half would truncate to Inf
    ("bf16-nan-not-quieted", COMMON, r"\(x >> 16\) \| 0x40u", "(x >> 16)", 0),
)

SOFTMAX = (
    ("softmax-max-of-the-first-tap", TILED, RUNNING_MAX, "(void)0;", 0),
    (
        "softmax-max-misses-the-last-tap",
        TILED,
        r"for \(int t = 1; t < TAPS; \+\+t\) largest =",
        "for (int t = 1; t < TAPS - 1; ++t) largest =",
        0,
    ),
    (
        "softmax-subtracts-the-minimum",
        TILED,
        r"largest = values\[t\] > largest",
        "largest = values[t] < largest",
        0,
    ),
    ("fused-grad-features-normaliser-max-of-the-first-tap", TILED, RUNNING_MAX, "(void)0;", 1),
    (
        "fused-grad-features-normaliser-subtracts-the-minimum",
        TILED,
        r"largest = values\[t\] > largest",
        "largest = values[t] < largest",
        1,
    ),
    (
        "fused-grad-features-weight-without-the-max",
        GRAD_FEATURES,
        r"accumulate_exp\(value - shared\[2 \* e\]\)",
        "accumulate_exp(value)",
        0,
    ),
    (
        "fused-grad-features-normaliser-of-a-neighbour",
        GRAD_FEATURES,
        r"const int e = normaliser_origin - \(i \* cols \+ j\) \* s;",
        "const int e = normaliser_origin - (i * cols + j) * s + 1;",
        0,
    ),
)

STEP_WIDTH = (
    (
        "fused-logit-tap-step-s",
        FORWARD,
        r"tap_step = \(index_t\)\(s \* s\) \* ms\.c;",
        "tap_step = (index_t)s * ms.c;",
        0,
    ),
    (
        "fused-logit-tap-step-32-bit",
        FORWARD,
        r"tap_step = \(index_t\)\(s \* s\) \* ms\.c;",
        "tap_step = (int)((s * s) * ms.c);",
        0,
    ),
    (
        "fused-grad-features-taps-apart-s",
        GRAD_FEATURES,
        r"\(index_t\)s \* s \* ms\.c",
        "(index_t)s * ms.c",
        0,
    ),
    (
        "fused-grad-features-taps-apart-32-bit",
        GRAD_FEATURES,
        r"\(index_t\)s \* s \* ms\.c",
        "(int)(s * s * ms.c)",
        0,
    ),
    (
        "fused-grad-features-row-step-32-bit",
        GRAD_FEATURES,
        r"row_step = K \* taps_apart - pixel_step \* ms\.h;",
        "row_step = (int)(K * taps_apart) - pixel_step * ms.h;",
        0,
    ),
    (
        "fused-grad-logits-channel-offset-32-bit",
        GRAD_MASKS,
        r"grad_masks \+ p\.n \* ms\.n \+ channel \* ms\.c \+",
        "grad_masks + p.n * ms.n + (int)(channel * ms.c) +",
        0,
    ),
    (
        "tiled-halo-row-offset-32-bit",
        FORWARD,
        r"offset\[i\] = row \* st\.h \+ col \* st\.w;",
        "offset[i] = (int)(row * st.h) + col * st.w;",
        0,
    ),
    (
        "tiled-halo-column-offset-32-bit",
        FORWARD,
        r"offset\[i\] = row \* st\.h \+ col \* st\.w;",
        "offset[i] = row * st.h + (int)(col * st.w);",
        0,
    ),
    (
        "tiled-forward-mask-group-offset-32-bit",
        FORWARD,
        r"\(p\.group \* TAPS\) \* ms\.c \+ y",
        "(int)((p.group * TAPS) * ms.c) + y",
        0,
    ),
    (
        "grad-masks-element-offset-32-bit",
        GRAD_MASKS,
        r"element_offset\[slot\] = \(index_t\)r \* fs\.h \+ in_col \* fs\.w;",
        "element_offset[slot] = (int)((index_t)r * fs.h + in_col * fs.w);",
        0,
    ),
    (
        "grad-masks-tap-store-32-bit",
        GRAD_MASKS,
        r"\(p\.group \* TAPS \+ t\) \* ms\.c \+ y \* ms\.h",
        "(int)((p.group * TAPS + t) * ms.c) + y * ms.h",
        0,
    ),
    (
        "grad-masks-grad-output-row-32-bit",
        GRAD_MASKS,
        r"y \* gs\.h \+ x \* gs\.w;",
        "(int)(y * gs.h) + x * gs.w;",
        0,
    ),
    (
        "grad-features-halo-offset-32-bit",
        GRAD_FEATURES,
        r"offset = y \* gs\.h \+ x \* gs\.w;",
        "offset = (int)(y * gs.h + x * gs.w);",
        0,
    ),
    (
        "general-feature-column-32-bit",
        GENERAL,
        r"feature_row \+ feature_x \* feature_strides\.w",
        "feature_row + (int)(feature_x * feature_strides.w)",
        0,
    ),
    (
        "general-mask-tap-offset-32-bit",
        GENERAL,
        r"mask_pixel \+ \(i \* g\.kernel_size \+ j\) \* mask_strides\.c",
        "mask_pixel + (int)((i * g.kernel_size + j) * mask_strides.c)",
        0,
    ),
    (
        "general-grad-features-mask-row-32-bit",
        GENERAL,
        r"mask_group \+ i \* kernel_size \* mask_strides\.c \+ y \* mask_strides\.h",
        "mask_group + (int)(i * kernel_size * mask_strides.c) + y * mask_strides.h",
        0,
    ),
    (
        "general-grad-masks-feature-offset-32-bit",
        GENERAL,
        r"feature_y \* feature_strides\.h \+ feature_x \* feature_strides\.w : 0",
        "(int)(feature_y * feature_strides.h + feature_x * feature_strides.w) : 0",
        0,
    ),
    (
        "general-grad-masks-target-tap-32-bit",
        GENERAL,
        r"\(group \* taps \+ first\) \* grad_mask_strides\.c",
        "(int)((group * taps + first) * grad_mask_strides.c)",
        0,
    ),
)

NUMERICS = CONVERSIONS + SOFTMAX + STEP_WIDTH
