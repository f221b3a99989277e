"""Helpers for the server tests: read a Prometheus counter, wait for a condition."""
from __future__ import annotations

import re
import time

import httpx


def metric(url: str, name: str) -> float:
    """The value of `name` on the server's /metrics page (0 when not yet exported)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_for(predicate, timeout: float = 30.0) -> None:
    """Poll `predicate` until it holds; the test fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)
