__version__ = "0.1.0"
# Importing svlm.core first loads Debian's OpenBLAS (on Linux) before MLX, see nbs/00_core.ipynb.
from .core import OPENBLAS_PATH as _OPENBLAS_PATH
