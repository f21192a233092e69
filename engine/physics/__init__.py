"""Physics composed from kernels: mechanics (stress solves, stress-assisted transport)."""
