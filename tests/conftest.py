import os
import sys
from pathlib import Path

# tests import their helpers (naive.py) by plain name
sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    from hypothesis import settings
except ImportError:  # the property tests skip themselves without hypothesis
    pass
else:
    # "ci": the same examples on every run, few enough for a 2-core machine.
    settings.register_profile(
        "ci", derandomize=True, max_examples=40, deadline=None, database=None, print_blob=True
    )
    # "long": fresh random examples, many of them; for local runs.
    settings.register_profile("long", max_examples=3000, deadline=None, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
