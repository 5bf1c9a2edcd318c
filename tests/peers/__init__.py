"""Peers' API tests, ported (README.md here)."""

from __future__ import annotations

import pytest


def deviation(peer: str, why: str) -> pytest.MarkDecorator:
    """Skips a ported test that encodes the peer's own deviation from OpenAI's API, saying what we do instead."""
    return pytest.mark.skip(reason=f"{peer}'s own deviation from OpenAI's API: {why}")
