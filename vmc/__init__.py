"""vmc: neural-network variational Monte Carlo for molecules on JAX.

Units are atomic units throughout: lengths in bohr, energies in hartree.
"""

import time as _time

__version__ = "0.1.0"
START_TIME = _time.time()   # when the process imported vmc: "time to the first step" counts from here
