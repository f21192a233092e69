"""Exceptions of the ssbx engine."""


class ConfigError(ValueError):
    """Invalid input: the message names the field, the value and what is valid."""


class SimulationDiverged(RuntimeError):
    """The state became NaN/Inf; the output file keeps everything written before."""
