"""Instrument drivers and the serial transport (the instrument-layer issue fills this package)."""
