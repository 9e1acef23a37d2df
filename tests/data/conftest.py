"""Data tests keep their scan caches in their own temporary folders."""

import pytest


@pytest.fixture(autouse=True)
def _private_scan_cache(tmp_path_factory, monkeypatch):
  """Scans write `$CFAL_CACHE_DIR/scans/`: never the user's own cache."""
  monkeypatch.setenv("CFAL_CACHE_DIR",
                     str(tmp_path_factory.mktemp("cfal-cache")))
