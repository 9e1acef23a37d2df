"""Helpers the data and tools tests share."""

from __future__ import annotations

import pytest

from cfal.data import mnist


def assert_one_line(err: pytest.ExceptionInfo) -> str:
  """The message of a raised error, checked to be one non-empty line."""
  msg = str(err.value)
  assert msg and "\n" not in msg
  return msg


@pytest.fixture(name="isolated")
def isolated_mnist(monkeypatch, tmp_path):
  """Hides every real MNIST copy: empty env dir, no Keras cache, no cfal
  cache. Import it into a test module to use it as `isolated`."""
  env = tmp_path / "env"
  env.mkdir()
  monkeypatch.setenv("CFAL_DATA_DIR", str(env))
  monkeypatch.setattr(mnist, "KERAS_CACHE_DIR", str(tmp_path / "keras"))
  monkeypatch.setattr(mnist, "CACHE_DIR", str(tmp_path / "cfal-cache"))
  return env
