"""The CPU paths (also the fallback on CUDA without CuPy): the kernels compiled by
Numba (``jit_*``, where numba imports) and the pure-PyTorch path with its row
bands. Imports torch and numba, and nothing else of the package."""
