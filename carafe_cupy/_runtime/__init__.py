"""Running plans: GPU checks, the CuPy runtime (the only module that imports
CuPy) and the launcher. Imports _core, _kernels, _plan and _sim."""
