"""The CuPy / DLPack front end: arrays in, the inputs' kind of array out, on
CuPy's current stream. Imports _core, _plan and _runtime; no torch."""
