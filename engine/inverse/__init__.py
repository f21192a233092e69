"""Inverse problems: fittable parameters, SOC-map and voltage-curve fits, Laplace uncertainty, fit files."""
