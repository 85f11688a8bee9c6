"""Closed-loop autonomous experiment orchestrator for materials labs."""

__version__ = "0.1.0"
