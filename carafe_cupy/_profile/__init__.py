"""A GPU cost model that needs no GPU: ``python -m carafe_cupy profile``.

``static`` compiles the kernels with NVRTC and reads ptxas' report and the SASS;
``traffic`` runs the launcher's plans in the CPU simulator with the memory
tracer; ``model`` turns both into a time per launch with the constants of
``hardware``; ``report`` and ``cli`` produce the table and the JSON.
"""
