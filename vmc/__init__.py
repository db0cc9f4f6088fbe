"""vmc: neural-network variational Monte Carlo for molecules on JAX.

Units are atomic units throughout: lengths in bohr, energies in hartree.
"""

__version__ = "0.1.0"
