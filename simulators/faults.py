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

Device-specific alarm states (a pump's stall, a hotplate's sensor error) belong to each firmware.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

FaultKind = Literal["no_reply", "partial", "late", "corrupt", "disconnect", "noise"]
FAULT_KINDS: tuple[FaultKind, ...] = ("no_reply", "partial", "late", "corrupt", "disconnect", "noise")


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
        rate: chance that any reply is spoiled, with a kind drawn uniformly from ``kinds``.
        kinds: the kinds random faults draw from.
        seed: seeds the random faults.
        late_s: delay of a ``late`` reply.
        down_s: how long a ``disconnect`` keeps the port away.
    """

    def __init__(
        self,
        rate: float = 0.0,
        kinds: tuple[FaultKind, ...] = ("no_reply", "partial", "corrupt", "late"),
        seed: int = 0,
        late_s: float = 1.5,
        down_s: float = 0.2,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1], got {rate}")
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; choose from {FAULT_KINDS}")
        self.rate = rate
        self.kinds = kinds
        self.late_s = late_s
        self.down_s = down_s
        self._rng = np.random.default_rng(seed)
        self._script: deque[FaultKind] = deque()
        self._lock = threading.Lock()
        self.applied: list[FaultKind] = []
        self.replies = 0  # replies decided, spoiled or not

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

    def deliver(self, reply: bytes) -> Delivery:
        """Decides the fate of one reply."""
        with self._lock:
            self.replies += 1
            if self._script:
                kind: FaultKind | None = self._script.popleft()
            elif self.rate > 0 and self._rng.random() < self.rate:
                kind = self.kinds[int(self._rng.integers(len(self.kinds)))]
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
