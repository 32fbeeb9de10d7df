"""NumPy dtype -> Numba scalar type, for the dtypes nbconv computes in."""

import numpy as np
from numba import types

NUMBA_FLOAT = {
    np.dtype(np.float16): types.float16,
    np.dtype(np.float32): types.float32,
    np.dtype(np.float64): types.float64,
}
