"""DVC stage scripts (run as ``python -m stages.<name>``): thin layers over the ``palbert`` library."""

import os

# OpenMP threads that spin while waiting for work slow training several-fold when the cores are shared
# (measured: 3 steps 15 s spinning vs 2.4 s passive under load, benchmarks/speed.py). Must be set before
# torch is imported; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
