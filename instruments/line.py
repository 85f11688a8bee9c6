"""A generic line-protocol driver, configured entirely from the campaign file, for custom Arduino-class rigs
(a peristaltic pump board, a lamp, a relay box, a balance).

There is no vendor manual: the protocol is whatever the rig's sketch speaks, described in ``options:``::

    options:
      terminator: "\\n"                         # ends each command we send (default LF)
      reply_terminator: "\\r\\n"                 # ends each reply line (default CRLF, Arduino's println)
      ready_banner: 'READY .*'                 # Arduinos reset when the port opens: wait for this first
      ready_timeout_s: 5
      commands:
        set_speed:
          send: 'SET {value:.1f}'              # str.format, named fields only
          reply: 'OK (?P<value>-?\\d+(\\.\\d+)?)'  # must match the whole reply; named groups are returned
          error: 'ERR (?P<code>.+)'            # a reply matching this is a DeviceError
          idempotent: true                     # safe to resend after a lost reply (absolute set point)
          args: {value: {min: 0, max: 80}}
        pump_off: {send: 'OFF', reply: 'OK OFF', idempotent: true}
        led: {send: 'LED {state}', reply: null, args: {state: {choices: [0, 1]}}}
      safe_state: [pump_off, {command: set_speed, args: {value: 0}}]

Framing and choices:

- A command is ``send.format(**kwargs)`` + ``terminator``, encoded with ``encoding`` (ASCII by default).
- ``reply: null`` means the rig answers nothing: the bytes are written and the action returns None.
  Otherwise one reply line (up to ``reply_terminator``) is read; surrounding whitespace is ignored; the
  ``error`` pattern is tried first (:class:`DeviceError`, its ``code`` the ``code`` group or the line), then
  ``reply`` must match the whole line (else :class:`ProtocolError`). The action returns a dict of the named
  groups: a group that reads as a finite decimal number becomes a float, others stay strings (None if
  unmatched). Prefer number patterns (``-?\\d+(\\.\\d+)?``) to ``\\S+``: a reply garbled on the line then
  fails to match and an idempotent query is retried, instead of returning the garbled text.
- Templates are checked when the options are loaded: only named fields, each a declared argument, every
  declared argument used, no positional fields (``{}``/``{0}``), attribute or index access
  (``{x.__class__}``, ``{x[0]}``), conversions (``!r``), nested fields or widths over two digits; each is
  formatted once with sample values, and may not contain a line break. Regexes must compile. Errors name
  the field (a pydantic validation error).
- Each argument needs bounds: ``{min, max}`` (numbers, both required: an unbounded set point on a pump
  board is not safe) or ``{choices: [...]}``. Arguments outside are a :class:`LimitError` before any byte
  is sent. The campaign's ``limits:`` section for this driver is empty: the limits live with the commands.
- ``idempotent: false`` commands (a dose, a pulse) are never resent; a lost reply raises with
  ``effect_unknown=True``. A generic driver cannot know how to ask the rig what happened; the procedure
  or the operator must (configure an idempotent query command, e.g. a dose counter, for that).
- :meth:`LineDriver.connect` opens the port and, if ``ready_banner`` is set and the port was not already
  open, waits up to ``ready_timeout_s`` for a line the regex finds (``re.search``) before sending anything.
- :meth:`LineDriver.safe_state` runs the ``safe_state`` commands in order, logging (not raising) failures.

Beware: a regex with catastrophic backtracking can hang on a hostile reply; keep patterns simple.
"""

from __future__ import annotations

import logging
import math
import re
import string
import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from instruments.base import Driver, DriverSpec, Settings
from instruments.errors import DeviceError, InstrumentError, InstrumentTimeout, LimitError, ProtocolError
from instruments.transport import SerialSettings

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


# --- configuration models --------------------------------------------------------------------------


class ArgSpec(Settings):
    """Bounds of one argument: ``min`` and ``max`` (numbers), or ``choices``."""

    min: float | None = None
    max: float | None = None
    choices: list[int | float | str] | None = None

    @model_validator(mode="after")
    def _bounded(self) -> "ArgSpec":
        if self.choices is not None:
            if self.min is not None or self.max is not None or not self.choices:
                raise ValueError("give either non-empty 'choices' or 'min' and 'max', not both")
            for choice in self.choices:
                if isinstance(choice, str) and ("\r" in choice or "\n" in choice):
                    raise ValueError(f"choice {choice!r} contains a line break")
        elif self.min is None or self.max is None:
            raise ValueError("an argument needs both 'min' and 'max' (or 'choices'); unbounded values are refused")
        elif not (math.isfinite(self.min) and math.isfinite(self.max) and self.min <= self.max):
            raise ValueError(f"min {self.min} and max {self.max} must be finite with min <= max")
        return self


class CommandSpec(Settings):
    """One configured action: what to send, what reply to expect, whether resending is safe."""

    send: str
    reply: str | None = None
    error: str | None = None
    idempotent: bool = False
    args: dict[str, ArgSpec] = Field(default_factory=dict)
    timeout_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> "CommandSpec":
        used = template_fields(self.send)
        unknown = sorted(set(used) - set(self.args))
        if unknown:
            raise ValueError(f"send template {self.send!r} uses {', '.join(unknown)}, not declared under 'args'")
        unused = sorted(set(self.args) - set(used))
        if unused:
            raise ValueError(f"args {', '.join(unused)} are not used in the send template {self.send!r}")
        for field in ("reply", "error"):
            pattern = getattr(self, field)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296}; thousands of nested groups
                    raise ValueError(f"{field} pattern {pattern!r} is not a valid regex: {exc}") from None
        for arg, spec in self.args.items():  # every argument's samples must format
            samples = spec.choices if spec.choices is not None else [spec.min, spec.max]
            for sample in samples:
                if not _formats(self.send, self.args, arg, sample):
                    raise ValueError(f"send template {self.send!r} cannot format {arg}={sample!r}")
        return self


def _formats(template: str, args: Mapping[str, ArgSpec], arg: str, sample: Any) -> bool:
    """Whether the template formats with ``arg=sample`` (whole-number bounds also tried as ints, for ``:d``)."""
    kwargs = {a: (s.choices[0] if s.choices else s.min) for a, s in args.items()}
    kwargs[arg] = sample
    as_int = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in kwargs.items()}
    for candidate in (kwargs, as_int):
        try:
            format_command(template, candidate, "\n", "utf-8")  # the options check the actual encoding
            return True
        except LimitError:
            continue
    return False


class SafeStep(Settings):
    """A command with fixed arguments, run by ``safe_state``."""

    command: str
    args: dict[str, int | float | str] = Field(default_factory=dict)


def template_fields(template: str) -> list[str]:
    """The named fields of a ``str.format`` template, in order.

    Raises:
        ValueError: a positional field, attribute or index access, a conversion, a nested field, a width or
            precision over two digits, a stray brace, or a line break.
    """
    if "\r" in template or "\n" in template:
        raise ValueError(f"template {template!r} contains a line break; the terminator is added by the driver")
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template {template!r}: {exc}") from None
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if not _NAME.fullmatch(field):
            raise ValueError(
                f"template {template!r}: field {{{field}}} must be a plain argument name "
                "(no positional {}, no attribute or index access)"
            )
        if conversion is not None:
            raise ValueError(f"template {template!r}: conversions like !{conversion} are not allowed")
        if "{" in (spec or "") or re.search(r"\d{3}", spec or ""):
            raise ValueError(f"template {template!r}: format spec {spec!r} has a nested field or a width over 99")
        fields.append(field)
    return fields


# --- pure protocol functions -----------------------------------------------------------------------


def format_command(template: str, kwargs: Mapping[str, Any], terminator: str, encoding: str = "ascii") -> bytes:
    """The bytes of one command: the template formatted with ``kwargs``, then the terminator.

    Raises:
        LimitError: an argument the template cannot format, or a result that is not one clean line.
    """
    try:
        text = template.format_map(dict(kwargs))
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise LimitError(f"cannot format {template!r} with {dict(kwargs)}: {exc}") from None
    if "\r" in text or "\n" in text or (terminator and terminator in text):
        raise LimitError(f"command {text!r} contains a line break or the terminator")
    try:
        return (text + terminator).encode(encoding)
    except UnicodeEncodeError:
        raise LimitError(f"command {text!r} is not {encoding}") from None


def _value(text: str | None) -> float | str | None:
    if text is not None and _NUMBER.fullmatch(text) and math.isfinite(number := float(text)):
        return number
    return text


def parse_reply(
    frame: bytes,
    reply: re.Pattern[str],
    error: re.Pattern[str] | None = None,
    reply_terminator: bytes = b"\r\n",
    encoding: str = "ascii",
) -> dict[str, float | str | None]:
    """Checks one reply line against the error and reply patterns; returns the reply's named groups.

    Raises:
        DeviceError: the line matches ``error``.
        ProtocolError: the line cannot be decoded or does not match ``reply``.
    """
    body = frame[: -len(reply_terminator)] if reply_terminator and frame.endswith(reply_terminator) else frame
    try:
        text = body.decode(encoding).strip()
    except UnicodeDecodeError:
        raise ProtocolError(f"reply {frame!r} is not {encoding}") from None
    if error is not None and (m := error.fullmatch(text)):
        code = m.groupdict().get("code") or text
        raise DeviceError(f"the rig reports an error: {text!r}", code=code)
    m = reply.fullmatch(text)
    if m is None:
        raise ProtocolError(f"reply {text!r} does not match {reply.pattern!r}")
    return {k: _value(v) for k, v in m.groupdict().items()}


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float (10**400)
        return False


def _as_sent(template: str, arg: str, value: Any) -> list[str]:
    """How ``arg`` reads in the command, once per field of the template that formats it."""
    out = []
    for _literal, field, spec, _conversion in string.Formatter().parse(template):
        if field == arg:
            try:
                out.append(format(value, spec or "").strip())
            except (ValueError, TypeError):
                pass  # format_command reports it
    return out


def check_arguments(
    command: str,
    spec: CommandSpec,
    kwargs: Mapping[str, Any],
    instrument: str = "",
    terminator: str = "\n",
    encoding: str = "ascii",
) -> None:
    """Checks ``kwargs`` against a command's declared arguments (pure).

    Raises:
        LimitError: a missing or unknown argument, a value of the wrong kind, outside [min, max] or not
            one of the choices, or one the template cannot format.
    """
    missing = sorted(set(spec.args) - set(kwargs))
    extra = sorted(repr(k) if not isinstance(k, str) else k for k in set(kwargs) - set(spec.args))  # {1: 2} too
    if missing or extra:
        raise LimitError(
            f"{command}: " + "; ".join(
                ([f"missing argument(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown argument(s) {', '.join(extra)}; it takes: {', '.join(spec.args) or 'none'}"] if extra else [])
            ),
            instrument=instrument,
        )
    for arg, bounds in spec.args.items():
        value = kwargs[arg]
        if bounds.choices is not None:
            same_kind = [c for c in bounds.choices if isinstance(c, str) == isinstance(value, str)]
            if isinstance(value, bool) or value not in same_kind:
                raise LimitError(f"{command}: {arg}={value!r} is not one of {bounds.choices}", instrument=instrument)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise LimitError(f"{command}: {arg} must be a finite number, got {value!r}", instrument=instrument)
        if not bounds.min <= value <= bounds.max:  # type: ignore[operator] - both set for numbers
            raise LimitError(
                f"{command}: {arg}={value:.12g} is outside [{bounds.min:.12g}, {bounds.max:.12g}]; refused before sending",
                instrument=instrument,
            )
        for text in _as_sent(spec.send, arg, value):  # {value:.1f} sends 79.96 as 80.0, over a 79.97 bound
            if _NUMBER.fullmatch(text) and not bounds.min <= float(text) <= bounds.max:  # type: ignore[operator]
                raise LimitError(
                    f"{command}: {arg}={value:.12g} is sent as {text}, outside [{bounds.min:.12g}, {bounds.max:.12g}]; "
                    "refused before sending",
                    instrument=instrument,
                )
    try:
        format_command(spec.send, kwargs, terminator, encoding)
    except LimitError as exc:
        raise LimitError(f"{command}: {exc}", instrument=instrument) from None


# --- the driver ------------------------------------------------------------------------------------


class LineDriver(Driver):
    """A rig whose commands come from ``options.commands``; ``ACTIONS`` are their names (per instance)."""

    class Limits(Settings):
        """Empty: the limits of each argument live with its command (``options.commands.<name>.args``)."""

    class Options(Settings):
        """Framing, ready banner, commands and the safe-state sequence."""

        terminator: str = Field("\n", min_length=1)
        reply_terminator: str = Field("\r\n", min_length=1)
        encoding: Literal["ascii", "latin-1", "utf-8"] = "ascii"
        ready_banner: str | None = None
        ready_timeout_s: float = Field(5.0, ge=0)
        commands: dict[str, CommandSpec] = Field(default_factory=dict)
        safe_state: list[str | SafeStep] = Field(default_factory=list)

        @model_validator(mode="after")
        def _consistent(self) -> "LineDriver.Options":
            if self.ready_banner is not None:
                try:
                    re.compile(self.ready_banner)
                except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296}; thousands of nested groups
                    raise ValueError(f"ready_banner {self.ready_banner!r} is not a valid regex: {exc}") from None
            for name, spec in self.commands.items():
                if not _NAME.fullmatch(name):
                    raise ValueError(f"command name {name!r} must be a letter followed by letters, digits or _")
                if self.terminator in spec.send:
                    raise ValueError(f"commands.{name}.send contains the terminator {self.terminator!r}")
                try:
                    spec.send.encode(self.encoding)
                except UnicodeEncodeError:
                    raise ValueError(f"commands.{name}.send is not {self.encoding}; set 'encoding'") from None
            for i, step in enumerate(self.steps()):
                if step.command not in self.commands:
                    raise ValueError(f"safe_state[{i}]: no command '{step.command}'; commands: {', '.join(self.commands)}")
                try:
                    check_arguments(step.command, self.commands[step.command], step.args, "", self.terminator, self.encoding)
                except LimitError as exc:
                    raise ValueError(f"safe_state[{i}]: {exc}") from None
            return self

        def steps(self) -> list[SafeStep]:
            """``safe_state`` with bare names as steps without arguments."""
            return [SafeStep(command=s) if isinstance(s, str) else s for s in self.safe_state]

    def __init__(self, transport: Any, *, name: str, limits: Any = None, options: Any = None, clock: Any = None):
        super().__init__(transport, name=name, limits=limits, options=options, clock=clock)
        opt = self.options
        self.ACTIONS = frozenset(opt.commands)  # type: ignore[misc] - configured per instance
        self._patterns = {
            n: (re.compile(c.reply) if c.reply is not None else None, re.compile(c.error) if c.error is not None else None)
            for n, c in opt.commands.items()
        }
        self._banner = re.compile(opt.ready_banner) if opt.ready_banner is not None else None

    def repeatable(self, action: str) -> bool:
        """A configured command is harmless to send again exactly when it is declared ``idempotent``."""
        spec = self.options.commands.get(action)
        return spec is not None and spec.idempotent

    # --- the safety contract ---------------------------------------------------------------------
    def validate(self, action: str, kwargs: Mapping[str, Any]) -> None:
        """Checks a configured command's arguments against its declared bounds (pure)."""
        if action not in self.ACTIONS:
            raise LimitError(f"has no action '{action}'; it offers: {', '.join(sorted(self.ACTIONS))}", instrument=self.name)
        opt = self.options
        check_arguments(action, opt.commands[action], kwargs, self.name, opt.terminator, opt.encoding)

    def perform(self, action: str, kwargs: Mapping[str, Any]) -> dict[str, float | str | None] | None:
        """Validates, then sends one configured command; returns the reply's named groups (None: no reply)."""
        self.validate(action, kwargs)
        spec = self.options.commands[action]
        payload = format_command(spec.send, kwargs, self.options.terminator, self.options.encoding)
        if spec.reply is None:
            self.transport.send(payload, idempotent=spec.idempotent)
            return None
        reply, error = self._patterns[action]
        end = self.options.reply_terminator.encode(self.options.encoding)

        def parse(frame: bytes) -> dict[str, float | str | None]:
            try:
                return parse_reply(frame, reply, error, end, self.options.encoding)  # type: ignore[arg-type]
            except DeviceError as exc:
                raise DeviceError(f"{action}: {exc}", code=exc.code, instrument=self.name) from None
            except ProtocolError as exc:
                raise ProtocolError(f"{action}: {exc}", instrument=self.name) from None

        return self.transport.query(payload, end=end, parse=parse, timeout_s=spec.timeout_s, idempotent=spec.idempotent)

    def call(self, action: str, **kwargs: Any) -> dict[str, float | str | None] | None:
        """``perform`` with keyword arguments: ``rig.call("set_speed", value=20)``."""
        return self.perform(action, kwargs)

    def action_parameters(self, action: str) -> list[str]:
        """The declared argument names of a command, in order."""
        return list(self.options.commands[action].args)

    def safe_state(self) -> None:
        """Runs the configured safe-state commands in order; logs failures and goes on."""
        for step in self.options.steps():
            try:
                self.perform(step.command, step.args)
            except InstrumentError as exc:
                log.error("%s: safe-state command %s failed: %s", self.name, step.command, exc)

    # --- lifecycle -------------------------------------------------------------------------------
    def connect(self) -> None:
        """Opens the port; waits for the ready banner when one is configured and the port was just opened.

        Raises:
            InstrumentTimeout: no line matching ``ready_banner`` within ``ready_timeout_s``.
        """
        was_open = self.transport.is_open
        self.transport.open()
        if self._banner is None or was_open:
            return
        end = self.options.reply_terminator.encode(self.options.encoding)
        deadline = time.monotonic() + self.options.ready_timeout_s
        first = True
        while (left := deadline - time.monotonic()) > 0:
            try:
                # The first line through a query of nothing (its flush drops only what came before the
                # reset); the next ones without flushing, so a banner right behind another line is kept.
                if first:
                    frame = self.transport.query(b"", end=end, parse=bytes, timeout_s=left, idempotent=False)
                else:
                    frame = self.transport.read_frame(end=end, timeout_s=left)
            except InstrumentTimeout:
                break
            first = False
            line = frame.decode(self.options.encoding, "replace").strip()
            if self._banner.search(line):
                log.info("%s: ready (%s)", self.name, line)
                return
            log.debug("%s: before the ready banner: %r", self.name, line)
        raise InstrumentTimeout(
            f"no ready banner matching {self._banner.pattern!r} within {self.options.ready_timeout_s} s after opening "
            "the port; check the baud rate, the sketch, and that the board resets when the port opens",
            instrument=self.name,
        )


SPEC = DriverSpec(
    kind="line",
    driver=LineDriver,
    serial=SerialSettings(baudrate=9600, bytesize=8, parity="N", stopbits=1, timeout_s=1.0),
    firmware="simulators.firmware.line:make_firmware",
    summary="Generic line protocol for custom Arduino-class rigs; commands, replies and bounds from the campaign",
)
