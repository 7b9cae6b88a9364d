"""The device code as data: where the .cu files are, their expanded source with
the shared constants, and KernelId. Imports _core only; no CuPy."""
