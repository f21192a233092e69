"""The device-resident stepper: resolved model, one State, one step, the device loop.

Data flow: scenario -> :func:`resolve.resolve_cell` (geometry arrays and parameter
pytrees, once) -> :func:`cell_step.initial_state` -> :func:`loop.advance` (a chunk of
steps in one ``lax.while_loop``, events on the device) -> the host writes the chunk
(:func:`cell_run.run_cell_device`).
"""
