"""The CuPy / DLPack front end: arrays in, the inputs' kind of array out, on
CuPy's current stream, or through PyTorch for arrays in host memory (imported
only then). Imports _core, _plan, _runtime and _torch."""
