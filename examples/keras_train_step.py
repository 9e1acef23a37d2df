"""Use a cfal head inside your own `keras.Model.train_step`, then `fit`.

Run:  .venv/bin/python examples/keras_train_step.py --head cfal --steps 300
(--head: center_loss, arcface, cfal or softmax). Needs Fashion-MNIST locally:
`apt-get install dataset-fashion-mnist`, or set $CFAL_DATA_DIR.

A Keras 3 model does not track the variables of a `tf.Module` attribute: they
are missing from `model.trainable_variables` (so `fit` would build the
optimizer without them) and from `model.save`/`save_weights`. This model
therefore lists them explicitly; to save the head, use
`tf.train.Checkpoint(head=model.head)` next to `model.save_weights`.
"""

from __future__ import annotations

import argparse
import sys

import keras
import tensorflow as tf

import cfal.data
import cfal.heads

EMBEDDING_DIM = 64


class HeadModel(keras.Model):
  """A backbone producing embeddings, trained through a cfal head's loss."""

  def __init__(self, backbone: keras.Model, head: cfal.heads.Head) -> None:
    super().__init__()
    self.backbone = backbone
    self.head = head
    self.loss_tracker = keras.metrics.Mean(name="loss")
    self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

  def variables_to_train(self) -> list[tf.Variable]:
    return self.backbone.trainable_variables + list(
        self.head.trainable_variables)

  def compile(self, *args, **kwargs) -> None:
    super().compile(*args, **kwargs)
    # Build the optimizer for the head's variables too. Otherwise `fit` under
    # a tf.distribute strategy builds it from `self.trainable_variables`,
    # which lacks them, and `apply_gradients` fails with "Unknown variable".
    self.optimizer.build(self.variables_to_train())

  def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
    return self.head(self.backbone(x, training=training))

  @property
  def metrics(self) -> list[keras.metrics.Metric]:
    return [self.loss_tracker, self.accuracy_tracker]  # reset every epoch

  def _update_metrics(self, loss, emb, y) -> dict[str, tf.Tensor]:
    correct = tf.cast(self.head.predict(emb) == tf.cast(y, tf.int32),
                      tf.float32)
    self.loss_tracker.update_state(loss)
    self.accuracy_tracker.update_state(correct)
    return {m.name: m.result() for m in self.metrics}

  def train_step(self, data) -> dict[str, tf.Tensor]:
    x, y = data
    variables = self.variables_to_train()
    with tf.GradientTape() as tape:
      emb = self.backbone(x, training=True)
      loss = tf.reduce_mean(self.head.loss(emb, y))
    grads = tape.gradient(loss, variables)
    self.optimizer.apply_gradients(zip(grads, variables))
    self.head.update(emb, y)  # center-loss alpha rule; a no-op otherwise
    return self._update_metrics(loss, emb, y)

  def test_step(self, data) -> dict[str, tf.Tensor]:
    x, y = data
    emb = self.backbone(x, training=False)
    return self._update_metrics(tf.reduce_mean(self.head.loss(emb, y)), emb, y)


def make_backbone() -> keras.Sequential:
  """A small CNN mapping [N, 28, 28] uint8 images to [N, D] embeddings."""
  return keras.Sequential([
      keras.Input((28, 28)),
      keras.layers.Rescaling(1 / 255),
      keras.layers.Reshape((28, 28, 1)),
      keras.layers.Conv2D(32, 3, activation="relu"),
      keras.layers.MaxPooling2D(),
      keras.layers.Conv2D(64, 3, activation="relu"),
      keras.layers.MaxPooling2D(),
      keras.layers.Flatten(),
      keras.layers.Dense(EMBEDDING_DIM),
  ])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--head", default="center_loss",
                      choices=["center_loss", "arcface", "cfal", "softmax"])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=64)
  args = parser.parse_args()
  if args.steps < 1 or args.batch_size < 1:
    parser.error("--steps and --batch_size must be >= 1")
  try:
    x_train, y_train = cfal.data.load_fashion_mnist("train")
    x_test, y_test = cfal.data.load_fashion_mnist("test")
  except cfal.data.DataError as e:
    sys.exit(f"error: {e}")

  keras.utils.set_random_seed(0)
  head = cfal.heads.HEADS[args.head](num_classes=10,
                                    embedding_dim=EMBEDDING_DIM)
  model = HeadModel(make_backbone(), head)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))

  log_every = max(1, args.steps // 10)

  def log(batch: int, logs: dict) -> None:
    step = batch + 1
    if step % log_every == 0 or step == args.steps:
      # Keras reports means since the start of the epoch.
      print(f"step {step} loss {float(logs['loss']):.4f} "
            f"accuracy {float(logs['accuracy']):.3f}")

  batches = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
             .shuffle(10_000, seed=0).repeat().batch(args.batch_size))
  model.fit(batches, epochs=1, steps_per_epoch=args.steps, shuffle=False,
            verbose=0,
            callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=log)])
  result = model.evaluate(x_test[:2000], y_test[:2000], batch_size=500,
                          verbose=0, return_dict=True)
  print(f"test accuracy {result['accuracy']:.4f}")


if __name__ == "__main__":
  main()
