"""Distribution strategies for tests on logical CPU devices.

`tests/conftest.py` splits the CPU into logical devices before TensorFlow
initialises; these helpers build strategies over them.
"""

from __future__ import annotations

import tensorflow as tf


def mirrored_strategy(replicas: int) -> tf.distribute.MirroredStrategy:
  """A MirroredStrategy over the first `replicas` logical CPUs.

  Strategies made in one process share collective group keys; a test that
  makes several (of different sizes) would join mismatched groups. Moving
  the key base for each new strategy is what TensorFlow's own
  strategy_combinations does. A training run makes one strategy and never
  needs this.
  """
  tf.distribute.MirroredStrategy._collective_key_base += 100_000
  return tf.distribute.MirroredStrategy(
      [f"/cpu:{i}" for i in range(replicas)])
