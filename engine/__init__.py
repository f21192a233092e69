"""ssbx.engine: the model users drive (microstructure, scenarios, time stepping, I/O, CLI)."""
