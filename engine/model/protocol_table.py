"""A cycling protocol compiled to arrays, so the device loop can switch steps itself.

One cycle's steps (engine.config.protocol.parse_cycle) become a :class:`ProtocolTable` of
per-step arrays; the position in the protocol is one integer ``pointer`` =
cycle · n_steps + step, so a protocol of a million cycles is as small as one of one
cycle (nothing is expanded). Step kinds: ``CC`` (constant current until a voltage,
or a time cap), ``CV`` (hold a voltage until the current falls below a rate, or a
time cap), ``REST`` (zero current for a time).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ssbx.engine.config.protocol import Step, parse_cycle

CC, CV, REST = 0, 1, 2


class ProtocolTable(eqx.Module):
    """Per-step arrays of one cycle (length ``n_steps``) and the number of cycles.

    Attributes:
        mode: int32, CC / CV / REST.
        sign: +1 charge, −1 discharge (CC), 0 otherwise.
        c_rate: current magnitude of a CC step or the cut-off rate of a CV step (1/h).
        voltage_V: cut-off voltage of a CC step, held voltage of a CV step (V).
        max_duration_s: time cap (REST: its duration); +inf when the step has none.
        n_cycles: int32 scalar.
    """

    mode: jax.Array
    sign: jax.Array
    c_rate: jax.Array
    voltage_V: jax.Array
    max_duration_s: jax.Array
    n_cycles: jax.Array

    @property
    def n_steps(self) -> int:
        return self.mode.shape[-1]

    @property
    def n_total(self) -> jax.Array:
        """Number of protocol steps over all cycles (the pointer's end value)."""
        return self.n_cycles * self.n_steps

    def position(self, pointer):
        """(step index within the cycle, cycle index) of a pointer."""
        return pointer % self.n_steps, pointer // self.n_steps

    @classmethod
    def from_steps(cls, steps: list[Step], cycles: int, dtype=jnp.float32) -> "ProtocolTable":
        mode = {"cc": CC, "cv": CV, "rest": REST}
        return cls(
            mode=jnp.asarray([mode[s.mode] for s in steps], jnp.int32),
            sign=jnp.asarray([s.sign for s in steps], dtype),
            c_rate=jnp.asarray([s.c_rate for s in steps], dtype),
            voltage_V=jnp.asarray([s.voltage_V for s in steps], dtype),
            max_duration_s=jnp.asarray(
                [np.inf if s.max_duration_s is None else s.max_duration_s for s in steps], dtype),
            n_cycles=jnp.asarray(int(cycles), jnp.int32),
        )

    @classmethod
    def from_config(cls, protocol, dtype=jnp.float32) -> "ProtocolTable":
        """From a validated ``[protocol]`` section (kind = "cycling")."""
        return cls.from_steps(parse_cycle(protocol.steps), protocol.cycles, dtype)
