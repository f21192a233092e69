"""Device stepping: one cell step, the device while-loop with events, the checkpointed differentiable rollout."""
