"""ssbx.engine: the model users drive.

Rooms, each importing only from the rooms listed before it (tests/test_layout.py):
errors/phases/safe_files → materials → config → geometry → physics → model → solve →
observables → io → runs → inverse → plots → cli/api. ``ssbx.engine.api.run`` is the
entry point for scripts and notebooks.
"""
