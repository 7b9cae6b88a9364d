"""Numbers the device code and the planner must agree on, defined once.

The planner reads them from here; :func:`defines` writes them ahead of every
kernel module's source (NVRTC, the offline compiles and the simulator alike),
so the ``.cu`` files use them without spelling them.
"""

from __future__ import annotations

TILE_THREADS = (32, 8)  # threads of a tiled block (x, y)
CHANNEL_BATCH_MAX = 4  # channels staged per barrier pair, at most
FEATURES_SLOTS = 3  # tiled grad_features: staging slots per block
MASKS_BATCH = 2  # tiled grad_masks: channels per warp staged per warp barrier pair
MASKS_QUAD_BATCH = 4  # grad_masks 2 x 2: channels per warp staged per warp barrier pair
MASKS_QUAD_SHARE = 2  # grad_masks 2 x 2: units each warp adds up per reduction round
# grad_masks 2 x 2, one kernel row a block: resident blocks per SM (sm_75 spills at 3)
MASKS_ROW_BLOCKS = 2
FORWARD_QUAD_ROWS = 4  # forward 2 x 2: thread rows of a block (32 x 4 threads, 64 x 8 pixels)
FORWARD_QUAD_BLOCKS = 3  # forward 2 x 2: resident blocks per SM its launch bounds ask for
# The general kernels: channels per thread (forward, grad_features), taps per thread
# (grad_masks); more would pass 96 registers.
GENERAL_FORWARD_STRIP = 4
GENERAL_FEATURES_STRIP = 2
GENERAL_TAP_STRIP = 4

_MACROS = {
    "CARAFE_TILE_THREADS_X": TILE_THREADS[0],
    "CARAFE_TILE_THREADS_Y": TILE_THREADS[1],
    "CARAFE_CHANNEL_BATCH_MAX": CHANNEL_BATCH_MAX,
    "CARAFE_FEATURES_SLOTS": FEATURES_SLOTS,
    "CARAFE_MASKS_BATCH": MASKS_BATCH,
    "CARAFE_MASKS_QUAD_BATCH": MASKS_QUAD_BATCH,
    "CARAFE_MASKS_QUAD_SHARE": MASKS_QUAD_SHARE,
    "CARAFE_MASKS_ROW_BLOCKS": MASKS_ROW_BLOCKS,
    "CARAFE_FORWARD_QUAD_ROWS": FORWARD_QUAD_ROWS,
    "CARAFE_FORWARD_QUAD_BLOCKS": FORWARD_QUAD_BLOCKS,
    "FORWARD_CHANNEL_STRIP": GENERAL_FORWARD_STRIP,
    "GRAD_FEATURES_CHANNEL_STRIP": GENERAL_FEATURES_STRIP,
    "TAP_STRIP": GENERAL_TAP_STRIP,
}


def defines() -> str:
    """The ``#define`` lines every kernel module starts with."""
    lines = [f"#define {name} {value}" for name, value in _MACROS.items()]
    return "\n".join(["#define CARAFE_CONSTANTS_DEFINED 1", *lines]) + "\n"
