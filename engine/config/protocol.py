"""Cycling protocol steps written the way a battery person says them.

Grammar (case-insensitive, one step per string):

    charge at 1C until 4.3 V            constant current, stop at the voltage limit
    discharge at 0.5C until 3.0 V
    charge at C/10 until 4.3 V or 2 h   ... or after a time cap (s, min, h)
    hold 4.3 V until C/20               constant voltage, stop when |I| falls below the rate
    hold 4.3 V until C/20 or 1 h
    rest 10 min                         zero current for a time (s, min, h)

C-rates are "2C", "0.5C" or "C/20"; 1C is the current that moves the theoretical
capacity F·c_max·V_active of the active material in one hour.
"""

from __future__ import annotations

import dataclasses
import math
import re

from ssbx.engine.errors import ConfigError

GRAMMAR = (
    '"charge at 1C until 4.3 V", "discharge at C/2 until 3.0 V or 3 h", '
    '"hold 4.3 V until C/20", "rest 10 min"'
)

_RATE = r"(?P<rate>\d*\.?\d+\s*C|C\s*/\s*\d*\.?\d+)"
_TIME = r"(?P<time>\d*\.?\d+)\s*(?P<unit>s|sec|min|h|hr|hours?|minutes?|seconds?)"
_CC = re.compile(rf"^(?P<dir>charge|discharge)\s+at\s+{_RATE}\s+until\s+(?P<volt>\d*\.?\d+)\s*V(\s+or\s+{_TIME})?$", re.I)
_CV = re.compile(rf"^hold\s+(?P<volt>\d*\.?\d+)\s*V\s+until\s+{_RATE}(\s+or\s+{_TIME})?$", re.I)
_REST = re.compile(rf"^rest\s+(for\s+)?{_TIME}$", re.I)

_UNIT_S = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "min": 60, "minute": 60, "minutes": 60,
           "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600}


@dataclasses.dataclass(frozen=True)
class Step:
    """One protocol step.

    mode: "cc", "cv" or "rest". sign: +1 charge, −1 discharge (cc). c_rate: current
    magnitude (cc) or the cut-off rate (cv). voltage_V: limit (cc) or held voltage
    (cv). max_duration_s: time cap (rest: its duration; None: no cap).
    """

    text: str
    mode: str
    sign: float = 0.0
    c_rate: float = 0.0
    voltage_V: float = 0.0
    max_duration_s: float | None = None


def _rate(text: str) -> float:
    text = text.replace(" ", "").upper()
    if text.startswith("C/"):
        divisor = float(text[2:])
        return 1.0 / divisor if divisor != 0 else math.inf  # "C/0" is refused as a non-finite rate
    return float(text[:-1])


def _seconds(match) -> float | None:
    if match.group("time") is None:
        return None
    return float(match.group("time")) * _UNIT_S[match.group("unit").lower()]


def parse_step(text: str, field: str = "protocol step") -> Step:
    """Parse one step; raises ConfigError naming the field and the valid forms."""
    if not isinstance(text, str):
        raise ConfigError(f"{field} = {text!r}: must be a string such as {GRAMMAR}")
    clean = " ".join(text.strip().split())
    if m := _CC.match(clean):
        step = Step(clean, "cc", 1.0 if m.group("dir").lower() == "charge" else -1.0,
                    _rate(m.group("rate")), float(m.group("volt")), _seconds(m))
    elif m := _CV.match(clean):
        step = Step(clean, "cv", 0.0, _rate(m.group("rate")), float(m.group("volt")), _seconds(m))
    elif m := _REST.match(clean):
        step = Step(clean, "rest", max_duration_s=_seconds(m))
    else:
        raise ConfigError(f"{field} = {text!r}: not a protocol step; valid forms: {GRAMMAR}")
    if step.mode != "rest" and not 0 < step.c_rate < math.inf:
        raise ConfigError(f"{field} = {text!r}: the C-rate must be a finite number > 0")
    if step.mode != "rest" and not 0 < step.voltage_V < 10:
        raise ConfigError(f"{field} = {text!r}: voltage {step.voltage_V} V outside (0, 10) V")
    if step.max_duration_s is not None and not step.max_duration_s > 0:
        raise ConfigError(f"{field} = {text!r}: the duration must be > 0")
    return step


def parse_cycle(steps) -> list[Step]:
    """The steps of one cycle; checks that the voltage window is sane."""
    if isinstance(steps, str) or not isinstance(steps, (list, tuple)):
        raise ConfigError(f"protocol.steps = {steps!r}: must be a list of step strings such as [{GRAMMAR}]")
    parsed = [parse_step(s, f"protocol.steps[{i}]") for i, s in enumerate(steps)]
    charge = [s.voltage_V for s in parsed if s.mode == "cc" and s.sign > 0]
    discharge = [s.voltage_V for s in parsed if s.mode == "cc" and s.sign < 0]
    if charge and discharge and min(charge) <= max(discharge):
        raise ConfigError(
            f"protocol.steps: the lower cut-off {max(discharge)} V must be below the upper "
            f"cut-off {min(charge)} V"
        )
    return parsed


def parse_protocol(steps, cycles: int = 1) -> list[Step]:
    """All steps, repeated ``cycles`` times (the expanded list of the host-side driver;
    the device stepper keeps one cycle and a cycle counter, engine.model.protocol_table)."""
    return parse_cycle(steps) * int(cycles)
