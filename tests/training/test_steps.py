"""The compiled train step on tiny models where every number is known."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfal.heads
from cfal.training.optimization import Optimization
from cfal.training.steps import Steps


def _one_hot_images(labels, dim):
  """Images whose flattened pixels are the one-hot of their label."""
  return np.eye(dim, dtype=np.float32)[labels].reshape(-1, dim, 1, 1)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_training_accuracy_is_that_of_the_forward_pass_of_the_loss(mode):
  # Every prediction of the step's forward pass is wrong; one SGD step with
  # a huge learning rate makes every prediction right. The reported
  # accuracy is the forward pass's (0), not that of the updated head (1).
  labels = np.array([0, 1] * 4, np.int32)
  images = _one_hot_images(labels, 2)
  strategy = tf.distribute.get_strategy()
  backbone = keras.Sequential([keras.Input((2, 1, 1)),
                               keras.layers.Flatten()])
  head = cfal.heads.Softmax(num_classes=2, embedding_dim=2, seed=0)
  head.prototypes.assign([[0.0, 1.0], [1.0, 0.0]])   # swapped classes
  optimizer = keras.optimizers.SGD(100.0)
  optimizer.build(list(head.trainable_variables))
  steps = Steps(strategy=strategy, backbone=backbone, head=head,
                optimization=Optimization.single(
                    optimizer, head.trainable_variables),
                global_batch_size=len(labels), mode=mode)
  dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  results = steps.train_loop(iterator, tf.constant(1), tf.constant(0))
  assert float(results["accuracy"]) == 0.0
  after = head.predict(tf.reshape(images, [-1, 2])).numpy()
  np.testing.assert_array_equal(after, labels)   # the update did flip them
  results = steps.train_loop(iterator, tf.constant(1), tf.constant(0))
  assert float(results["accuracy"]) == 1.0
