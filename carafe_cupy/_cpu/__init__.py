"""The PyTorch CPU path (also the fallback on CUDA without CuPy) and its row
bands. Imports torch and nothing else of the package."""
