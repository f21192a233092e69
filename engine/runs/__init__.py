"""Drivers that run a scenario into a run file: particle runs, cell runs (device stepper, legacy host loop), sweeps, resume."""
