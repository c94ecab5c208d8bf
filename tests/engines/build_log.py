"""Run the builder and keep what it logged (module-scoped fixtures cannot use caplog)."""

from __future__ import annotations

import logging

from engines.build import build_engine


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def build_logged(*args, **kwargs):
    """build_engine(...) and the messages it logged (module fixtures cannot use caplog)."""
    handler = _Records()
    target = logging.getLogger('engines')
    old_level = target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    try:
        return build_engine(*args, **kwargs), handler.messages
    finally:
        target.removeHandler(handler)
        target.setLevel(old_level)
