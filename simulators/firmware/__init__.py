"""Byte-level simulators of the instruments (one module per driver), served on pseudo-terminals."""
