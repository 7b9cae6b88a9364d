"""Which kernels a call launches, with grid, block, shared memory and tiling, and
the launch record tests read. Pure Python; imports _core and _kernels only."""
