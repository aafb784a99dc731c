"""pytest setup shared by every test module (and the notebooks run as tests)."""
import os

# `pytest -n 2` runs two workers on the machine's cores; OpenBLAS (loaded by `import svlm` on Linux) would start one
# thread per core in each, and the four threads spin against each other. One thread per worker: 80 training steps of
# the toy recipe took 46 s with OpenBLAS's default threads and 33 s with one, on a 2-core machine while another training
# run was using both cores (as the other worker does). Set before any test imports svlm; a value the caller set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
