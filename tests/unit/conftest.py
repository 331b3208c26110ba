"""Unit-test fixtures: the moto S3 server fixture lives in tests/conftest.py (shared with integration tests)."""

from __future__ import annotations

from tests.conftest import S3_CREDENTIALS

__all__ = ["S3_CREDENTIALS"]
