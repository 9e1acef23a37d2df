"""Train a Keras backbone with a cfal head in your own tf.GradientTape loop.

Run:  .venv/bin/python examples/custom_loop.py --head center_loss --steps 300
(--head: center_loss, arcface, cfal or softmax). Needs Fashion-MNIST locally:
`apt-get install dataset-fashion-mnist`, or set $CFAL_DATA_DIR.
"""

from __future__ import annotations

import argparse
import sys

import keras
import tensorflow as tf

import cfal.data
import cfal.heads

EMBEDDING_DIM = 64


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
  backbone = make_backbone()
  head = cfal.heads.HEADS[args.head](num_classes=10,
                                    embedding_dim=EMBEDDING_DIM)
  # A tf.Module does not see the variables of Keras 3 layers: list them all.
  variables = backbone.trainable_variables + list(head.trainable_variables)
  optimizer = keras.optimizers.Adam(1e-3)

  @tf.function
  def train_step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    with tf.GradientTape() as tape:
      emb = backbone(x, training=True)
      loss = tf.reduce_mean(head.loss(emb, y))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    head.update(emb, y)  # center-loss alpha rule; a no-op for other heads
    accuracy = tf.reduce_mean(tf.cast(head.predict(emb) == y, tf.float32))
    return loss, accuracy

  batches = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
             .shuffle(10_000, seed=0).repeat().batch(args.batch_size))
  log_every = max(1, args.steps // 10)
  for step, (x, y) in enumerate(batches.take(args.steps), start=1):
    loss, accuracy = train_step(x, y)
    if step % log_every == 0 or step == args.steps:
      print(f"step {step} loss {float(loss):.4f} "
            f"accuracy {float(accuracy):.3f}")

  pred = head.predict(backbone(x_test[:2000], training=False))
  accuracy = tf.reduce_mean(tf.cast(pred == y_test[:2000], tf.float32))
  print(f"test accuracy {float(accuracy):.4f}")


if __name__ == "__main__":
  main()
