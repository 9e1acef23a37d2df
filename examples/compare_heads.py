"""Every cfal head on long-tailed Fashion-MNIST, side by side.

The same small CNN backbone is trained with each head for the same number
of steps on a long-tailed version of the real Fashion-MNIST training set
(class c keeps 6000 * R^(-c/9) images), then scored on the balanced test
set. Heads that take class counts (CFAL, focal) get the counts of the data
actually used. Runs in a few minutes on 2 CPU cores:

    python examples/compare_heads.py                   # all heads
    python examples/compare_heads.py --heads=cfal,softmax --steps=600
"""

from __future__ import annotations

import argparse
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import cfal.data
import cfal.heads
from cfal.data.long_tail import long_tailed_indices

EMBEDDING_DIM = 64

# Hyper-parameters for a 64-d embedding of an unnormalised dense layer.
HEAD_ARGS = {
    "softmax": {},
    "focal": {"gamma": 2.0, "beta": 0.999},
    "arcface": {"scale": 30.0, "margin": 0.3},
    "cosface": {"scale": 30.0, "margin": 0.2},
    "sphereface": {"scale": 30.0, "margin": 1.35},
    "center_loss": {"alpha": 0.5, "center_weight": 0.01},
    "affinity": {"sigma": 100.0, "margin": 0.5},
    "cfal": {"sigma": 100.0, "margin": 0.5, "gamma": 2.0, "beta": 0.999},
}
USES_COUNTS = ("focal", "cfal")


def make_backbone(seed: int) -> keras.Sequential:
  keras.utils.set_random_seed(seed)
  return keras.Sequential([
      keras.Input((28, 28, 1)),
      keras.layers.Conv2D(32, 3, activation="relu"),
      keras.layers.MaxPooling2D(),
      keras.layers.Conv2D(64, 3, activation="relu"),
      keras.layers.MaxPooling2D(),
      keras.layers.Flatten(),
      keras.layers.Dense(EMBEDDING_DIM),
  ])


def train_and_score(name, images, labels, counts, test_x, test_y, args):
  backbone = make_backbone(args.seed)
  kwargs = dict(HEAD_ARGS[name])
  if name in USES_COUNTS:
    kwargs["class_counts"] = counts
  head = cfal.heads.HEADS[name](num_classes=10, embedding_dim=EMBEDDING_DIM,
                                seed=args.seed, **kwargs)
  # A tf.Module does not list a Keras 3 layer's variables: collect both.
  variables = backbone.trainable_variables + list(head.trainable_variables)
  optimizer = keras.optimizers.Adam(1e-3)
  optimizer.build(variables)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      emb = backbone(x, training=True)
      loss = tf.reduce_mean(head.loss(emb, y))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    head.update(emb, y)
    return loss

  data = (tf.data.Dataset.from_tensor_slices((images, labels))
          .shuffle(len(labels), seed=args.seed).repeat()
          .batch(args.batch_size)
          .map(lambda x, y: (tf.cast(x, tf.float32)[..., None] / 255.0, y))
          .prefetch(2))
  start = time.perf_counter()
  losses = [float(step(x, y)) for x, y in data.take(args.steps)]
  seconds = time.perf_counter() - start

  predict = tf.function(lambda x: head.predict(backbone(x)))
  pred = np.concatenate([
      predict(tf.constant(test_x[i:i + 1000, ..., None] / 255.0, tf.float32))
      for i in range(0, len(test_x), 1000)])
  recall = [np.mean(pred[test_y == c] == c) for c in range(10)]
  return {"head": name, "first_loss": np.mean(losses[:20]),
          "last_loss": np.mean(losses[-20:]),
          "accuracy": float(np.mean(pred == test_y)),
          "balanced_accuracy": float(np.mean(recall)),
          "tail_recall": float(np.mean(recall[-3:])), "seconds": seconds}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--heads", default=",".join(HEAD_ARGS))
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--imbalance_ratio", type=float, default=50.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args()
  names = args.heads.split(",")
  unknown = [n for n in names if n not in HEAD_ARGS]
  if unknown:
    parser.error(f"unknown head(s) {', '.join(unknown)}; choose from "
                 f"{', '.join(HEAD_ARGS)}")
  try:
    train_x, train_y = cfal.data.load_fashion_mnist("train", args.data_dir)
    test_x, test_y = cfal.data.load_fashion_mnist("test", args.data_dir)
  except cfal.data.DataError as error:
    sys.exit(f"error: {error}")

  keep = long_tailed_indices(train_y, args.imbalance_ratio, seed=args.seed)
  train_x, train_y = train_x[keep], train_y[keep]
  counts = np.bincount(train_y, minlength=10)
  print(f"Long-tailed Fashion-MNIST (ratio {args.imbalance_ratio:g}): "
        f"{len(train_y)} training images, per class {counts.tolist()}; "
        f"balanced test set of {len(test_y)}.")
  print(f"{args.steps} steps of batch {args.batch_size} per head.\n")
  print("| head | loss (first 20 -> last 20 steps) | test accuracy "
        "| balanced accuracy | recall of 3 rarest classes | train s |")
  print("| --- | --- | ---: | ---: | ---: | ---: |")
  for name in names:
    r = train_and_score(name, train_x, train_y, counts, test_x, test_y, args)
    print(f"| {r['head']} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} "
          f"| {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} "
          f"| {r['tail_recall']:.3f} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
  main()
