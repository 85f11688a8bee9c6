"""Fault knobs for byte-level simulators: what can go wrong between a device and its driver.

A :class:`FaultPlan` decides, per reply, whether the reply is delivered as is or spoiled. Faults come
from a script (``plan.inject("no_reply")`` spoils the next reply) or at random (``rate`` with a seeded
RNG), so a test can aim at one command and a soak run can spread faults at a known rate.

Kinds:
    ``no_reply``    the reply is dropped.
    ``partial``     only the first half of the reply is sent (the terminator never comes).
    ``late``        the reply is sent ``late_s`` seconds later (after the driver's timeout).
    ``corrupt``     one byte of the reply is flipped.
    ``disconnect``  the port vanishes (as an unplugged USB adapter does) for ``down_s`` seconds, then a new
                    port appears under the same stable name; the reply is lost.
    ``noise``       garbage bytes are sent before the reply.
    ``device_error`` the device itself reports an error state, in its own protocol, instead of carrying out
                    the command (a pump's ``A?S`` stall, an IKA ``ER 3``, GRBL ``ALARM:1``, an SCPI error queued
                    and no reply, a spectrometer ``ERR 3``, a rig's ``ERR``).
    ``bad_value``   a measurement comes back as NaN, infinity or a number no such instrument can read (a
                    spectrum with a ``nan`` or negative count, a plate at 9999.9 °C), well framed and checksummed.

The first six spoil bytes on the line, after the firmware answered; the last two (:data:`DEVICE_KINDS`) are
the device's own answers, so the :class:`~simulators.serial_device.PtyDevice` asks its firmware to express
them (:meth:`~simulators.serial_device.Firmware.express`) before the command is handled. A firmware that
cannot show a kind for a command (a pump has no measurement; NAMUR set commands get no reply) declines, and
a scripted device fault then waits for the next command that can show it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

FaultKind = Literal["no_reply", "partial", "late", "corrupt", "disconnect", "noise", "device_error", "bad_value"]
LINE_KINDS: tuple[FaultKind, ...] = ("no_reply", "partial", "late", "corrupt", "disconnect", "noise")
DEVICE_KINDS: tuple[FaultKind, ...] = ("device_error", "bad_value")
FAULT_KINDS: tuple[FaultKind, ...] = LINE_KINDS + DEVICE_KINDS

# The mix ``--fault-rate`` draws from (shares of the spoiled replies). Line noise dominates, as on a real bench;
# an instrument's own alarm and an unplugged adapter are rare, because each one (unlike a garbled query, which
# is retried) costs the experiment it hits, and a disconnect resets an Arduino-based board.
SOAK_KINDS: dict[FaultKind, float] = {
    "no_reply": 0.23, "partial": 0.23, "corrupt": 0.23, "late": 0.13, "noise": 0.10,
    "bad_value": 0.07, "device_error": 0.006, "disconnect": 0.004,
}


@dataclass
class Delivery:
    """What to do with one reply: the bytes to send (possibly spoiled), when, and whether to drop the port."""

    data: bytes
    delay_s: float = 0.0
    disconnect: bool = False
    fault: FaultKind | None = None


class FaultPlan:
    """Scripted and random faults for one simulated port.

    Args:
        rate: chance that any reply is spoiled, with a kind drawn from ``kinds``. A device kind is drawn per
            command, before the firmware answers, and only counts when the firmware can show it there.
        kinds: the kinds random faults draw from: a tuple (equal shares) or kind → weight (:data:`SOAK_KINDS`).
        seed: seeds the random faults.
        late_s: delay of a ``late`` reply.
        down_s: how long a ``disconnect`` keeps the port away.
    """

    def __init__(
        self,
        rate: float = 0.0,
        kinds: tuple[FaultKind, ...] | Mapping[FaultKind, float] = ("no_reply", "partial", "corrupt", "late"),
        seed: int = 0,
        late_s: float = 1.5,
        down_s: float = 0.2,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1], got {rate}")
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; choose from {FAULT_KINDS}")
        weights = dict(kinds) if isinstance(kinds, Mapping) else {k: 1.0 for k in kinds}
        if any(not (w >= 0) or w == float("inf") for w in weights.values()) or (rate > 0 and sum(weights.values()) <= 0):
            raise ValueError(f"fault kind weights must be finite, >= 0 and not all 0, got {weights}")
        self.rate = rate
        self.kinds = tuple(weights)
        self.weights = weights
        total = sum(weights.values()) or 1.0
        self._line = [(k, w) for k, w in weights.items() if k in LINE_KINDS and w > 0]
        self._device = [(k, w) for k, w in weights.items() if k in DEVICE_KINDS and w > 0]
        self._line_rate = rate * sum(w for _, w in self._line) / total
        self._device_rate = rate * sum(w for _, w in self._device) / total
        self.late_s = late_s
        self.down_s = down_s
        self._rng = np.random.default_rng(seed)
        # Device faults draw from their own stream, so adding them leaves a seed's line faults where they were.
        self._device_rng = np.random.default_rng([seed, 1])
        self._script: deque[FaultKind] = deque()
        self._lock = threading.Lock()
        self.applied: list[FaultKind] = []
        self.replies = 0  # replies decided, spoiled or not

    def set_rate(self, rate: float) -> None:
        """Changes the chance of a random fault, keeping the kinds' shares (a soak starts faults after connecting)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1], got {rate}")
        with self._lock:
            total = sum(self.weights.values()) or 1.0
            self.rate = rate
            self._line_rate = rate * sum(w for _, w in self._line) / total
            self._device_rate = rate * sum(w for _, w in self._device) / total

    def inject(self, kind: FaultKind, count: int = 1) -> None:
        """Spoils the next ``count`` replies with ``kind``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; choose from {FAULT_KINDS}")
        with self._lock:
            self._script.extend([kind] * count)

    def counts(self) -> dict[FaultKind, int]:
        """How many replies each kind has spoiled so far (kinds that never fired are left out)."""
        with self._lock:
            out: dict[FaultKind, int] = {}
            for kind in self.applied:
                out[kind] = out.get(kind, 0) + 1
            return out

    @staticmethod
    def _pick(rng: np.random.Generator, choices: list[tuple[FaultKind, float]]) -> FaultKind:
        if len({w for _, w in choices}) == 1:
            return choices[int(rng.integers(len(choices)))][0]
        p = np.array([w for _, w in choices], dtype=float)
        return choices[int(rng.choice(len(choices), p=p / p.sum()))][0]

    def device_fault(self, express: Callable[[FaultKind], bytes | None]) -> bytes | None:
        """Decides whether the device is in a fault state for one command, before the firmware handles it.

        Args:
            express: the firmware's answer to this command in a fault kind, or None when it cannot show it.

        Returns:
            the reply the firmware gave in the fault state (the command was not carried out as asked), or
            None: no device fault here, handle the command as usual.
        """
        with self._lock:
            if self._script:
                kind: FaultKind = self._script[0]
                if kind not in DEVICE_KINDS:
                    return None
                scripted = True
            elif self._device and self._device_rng.random() < self._device_rate:
                kind, scripted = self._pick(self._device_rng, self._device), False
            else:
                return None
        reply = express(kind)
        if reply is None:
            return None  # a scripted fault waits for a command that can show it
        with self._lock:
            if scripted and self._script and self._script[0] == kind:
                self._script.popleft()
            self.applied.append(kind)
        return reply

    def deliver(self, reply: bytes) -> Delivery:
        """Decides the fate of one reply."""
        with self._lock:
            self.replies += 1
            if self._script and self._script[0] not in DEVICE_KINDS:
                kind: FaultKind | None = self._script.popleft()
            elif self._line and self._rng.random() < self._line_rate:
                kind = self._pick(self._rng, self._line)
            else:
                kind = None
            if kind is not None:
                self.applied.append(kind)
            flip_at = int(self._rng.integers(max(1, len(reply))))
        if kind is None:
            return Delivery(reply)
        if kind == "no_reply":
            return Delivery(b"", fault=kind)
        if kind == "partial":
            return Delivery(reply[: len(reply) // 2], fault=kind)
        if kind == "late":
            return Delivery(reply, delay_s=self.late_s, fault=kind)
        if kind == "corrupt":
            spoiled = bytearray(reply)
            if spoiled:
                # Flip a high bit: the byte stays a byte, but the frame no longer parses or checks.
                spoiled[flip_at] ^= 0x40 if spoiled[flip_at] not in (0x0A, 0x0D, 0x02, 0x03) else 0x00
                if bytes(spoiled) == reply:
                    spoiled[0] ^= 0x40
            return Delivery(bytes(spoiled), fault=kind)
        if kind == "noise":
            return Delivery(b"\x7f#~" + reply, fault=kind)
        return Delivery(b"", disconnect=True, fault=kind)
