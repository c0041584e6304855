"""Expected failures: the command line prints these as one line and exits 2, never a traceback."""

from __future__ import annotations


class JaxtrainError(Exception):
    """An expected failure whose message names the file, key or value and the fix."""


class ConfigError(JaxtrainError, ValueError):
    """A config problem, phrased as key + what is wrong + how to fix it."""


def check(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ok: the one-liner every config section uses."""
    if not ok:
        raise ConfigError(message)
