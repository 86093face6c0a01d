"""Regular expressions from jobs, compiled with RE2: linear time, so no expression can hang a
worker through catastrophic backtracking."""

from __future__ import annotations

import functools

import re2


@functools.lru_cache(maxsize=256)
def compile_expression(expression: str) -> re2._Regexp:
    """Compile an untrusted expression; ValueError names what is wrong with it."""
    options = re2.Options()
    options.max_mem = 8 << 20  # bound the automaton's memory as well as its time
    options.log_errors = False
    try:
        return re2.compile(expression, options)
    except re2.error as error:
        reason = error.args[0] if error.args else error
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"not a valid regular expression (RE2 syntax): {reason}") from None
