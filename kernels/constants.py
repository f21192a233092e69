"""Physical constants (SI), in one place for kernels and engine alike.

Values are the exact SI-defining constants of the 2019 SI (CODATA 2018):
F = N_A e, R = N_A k_B.
"""

AVOGADRO = 6.02214076e23  # 1/mol
FARADAY = 96485.33212  # C/mol
GAS_CONSTANT = 8.314462618  # J/(mol K)
