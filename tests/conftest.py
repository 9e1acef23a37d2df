"""Test-wide setup: four logical CPU devices, made before TF initialises.

Distribution code is tested on CPU by splitting it into logical devices, the
way `train.py --cpu_replicas=N` does; this has to happen once, before any
test touches a device. Scan caches of image folders go to a temporary
folder of this test session (and its subprocesses), never the user's.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_CACHE = tempfile.mkdtemp(prefix="cfal-test-cache-")
os.environ["CFAL_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

from cfal import cli  # noqa: E402  (before TensorFlow: its oneDNN setting)
cli.prepare_environment()
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 4

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS)


@pytest.fixture(autouse=True)
def _fresh_collective_keys():
  """Strategies made by code under test (train()) get unshared group keys."""
  tf.distribute.MirroredStrategy._collective_key_base += 100_000
  yield
