import sys
from pathlib import Path

# tests import their helpers (naive.py) by plain name
sys.path.insert(0, str(Path(__file__).resolve().parent))
