"""Every cfal head on long-tailed Fashion-MNIST, side by side: a quick look.

The same small CNN backbone is trained with each head for the same number
of steps on a long-tailed version of the real Fashion-MNIST training set
(class c keeps 6000 * R^(-c/9) images), then scored on the balanced test
set. Heads that use class counts (CFAL, focal, the logit-adjusted heads,
LDAM) get the counts of the data actually used. Besides the heads, two
long-tail recipes built from library parts: LDAM-DRW (LDAM whose loss is
re-weighted by effective-number class weights for the last third of the
steps, Cao et al. 2019) and the post-hoc logit adjustment of the softmax
model (Menon et al. 2021: the same trained network, predicting with
`f_j - log pi_j`). One seed, no tuning: a quick comparison, not a study
(`studies/` has that). Runs in a few minutes on 2 CPU cores:

    python examples/compare_heads.py                   # every variant
    python examples/compare_heads.py --heads=cfal,softmax --steps=600
"""

from __future__ import annotations

import argparse
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import confusion_matrix, f1_score

import cfal.data
import cfal.heads
from cfal.data.long_tail import long_tailed_indices
from cfal.heads.parts import class_balanced_weights
from cfal.heads.posthoc import adjust_logits
from cfal.metrics.long_tail import long_tail_report

EMBEDDING_DIM = 64

# Variant -> (registry head, options). Hyper-parameters for a 64-d
# embedding of an unnormalised dense layer.
VARIANTS = {
    "softmax": ("softmax", {}),
    "balanced_softmax": ("balanced_softmax", {}),
    "logit_adjusted": ("logit_adjusted", {"tau": 1.0}),
    "focal": ("focal", {"gamma": 2.0, "beta": 0.999}),
    "ldam": ("ldam", {"scale": 30.0, "max_margin": 0.5}),
    "ldam_drw": ("ldam", {"scale": 30.0, "max_margin": 0.5}),
    "arcface": ("arcface", {"scale": 30.0, "margin": 0.3}),
    "subcenter_arcface": ("subcenter_arcface", {"scale": 30.0, "margin": 0.3,
                                                "num_subcenters": 3}),
    "cosface": ("cosface", {"scale": 30.0, "margin": 0.2}),
    "sphereface": ("sphereface", {"scale": 30.0, "margin": 1.35}),
    "center_loss": ("center_loss", {"alpha": 0.5, "center_weight": 0.01}),
    "affinity": ("affinity", {"sigma": 100.0, "margin": 0.5}),
    "cfal": ("cfal", {"sigma": 100.0, "margin": 0.5, "gamma": 2.0,
                      "beta": 0.999}),
}
# Deferred re-weighting: from this fraction of the steps, beta as Cao et al.
DRW_FROM, DRW_BETA = 2 / 3, 0.9999


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


def train_and_score(variant, images, labels, counts, test_x, test_y, args):
  """Trains one variant; returns {row label: scores} (softmax gives two)."""
  name, options = VARIANTS[variant]
  backbone = make_backbone(args.seed)
  head = cfal.heads.build_head(name, num_classes=10,
                               embedding_dim=EMBEDDING_DIM,
                               class_counts=counts, seed=args.seed, **options)
  # A tf.Module does not list a Keras 3 layer's variables: collect both.
  variables = backbone.trainable_variables + list(head.trainable_variables)
  optimizer = keras.optimizers.Adam(1e-3)
  optimizer.build(variables)
  # Per-class loss weights: ones, then the DRW weights from its switch.
  example_weights = tf.Variable(tf.ones([10]), trainable=False)
  drw_weights = class_balanced_weights(counts, DRW_BETA).astype(np.float32)
  drw_step = (int(DRW_FROM * args.steps) if variant == "ldam_drw"
              else args.steps)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      emb = backbone(x, training=True)
      per_example = head.loss(emb, y) * tf.gather(example_weights, y)
      loss = tf.reduce_mean(per_example)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    head.update(emb, y)
    return loss

  data = (tf.data.Dataset.from_tensor_slices((images, labels))
          .shuffle(len(labels), seed=args.seed).repeat()
          .batch(args.batch_size)
          .map(lambda x, y: (tf.cast(x, tf.float32)[..., None] / 255.0, y))
          .prefetch(2))
  start = time.perf_counter()
  losses = []
  for i, (x, y) in enumerate(data.take(args.steps)):
    if i == drw_step:
      example_weights.assign(drw_weights)
    losses.append(float(step(x, y)))
  seconds = time.perf_counter() - start

  scores = tf.function(lambda x: head(backbone(x)))
  logits = np.concatenate([
      scores(tf.constant(test_x[i:i + 1000, ..., None] / 255.0, tf.float32))
      for i in range(0, len(test_x), 1000)])
  rows = {variant: logits}
  if variant == "softmax":
    rows["softmax + post-hoc LA"] = adjust_logits(logits, counts, 1.0).numpy()
  common = {"first_loss": np.mean(losses[:20]),
            "last_loss": np.mean(losses[-20:]), "seconds": seconds}
  return {label: {**common, **_scores(row, test_y, counts)}
          for label, row in rows.items()}


def _scores(logits, test_y, counts):
  pred = np.argmax(logits, axis=1)
  groups = long_tail_report(
      counts, confusion_matrix(test_y, pred, labels=range(10)))
  return {"accuracy": float(np.mean(pred == test_y)),
          "macro_f1": float(f1_score(test_y, pred, average="macro")),
          "rule": groups["rule"],
          **{g: groups["groups"][g]["recall"]
             for g in ("many", "medium", "few")}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--heads", default=",".join(VARIANTS),
                      help="variants to train, comma-separated")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--imbalance_ratio", type=float, default=50.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args()
  names = args.heads.split(",")
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    parser.error(f"unknown head(s) {', '.join(unknown)}; choose from "
                 f"{', '.join(VARIANTS)}")
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
  print(f"{args.steps} steps of batch {args.batch_size} per head, seed "
        f"{args.seed}: one run each, a quick comparison.\n")
  print("| head | loss (first 20 -> last 20 steps) | test accuracy "
        "| macro-F1 | many | medium | few | train s |")
  print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  rule = None
  for name in names:
    results = train_and_score(name, train_x, train_y, counts, test_x, test_y,
                              args)
    for label, r in results.items():
      rule = r["rule"]
      print(f"| {label} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} "
            f"| {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['many']:.3f} "
            f"| {r['medium']:.3f} | {r['few']:.3f} | {r['seconds']:.0f} |",
            flush=True)
  print(f"\nmany/medium/few: mean recall of each group of classes; {rule}.")


if __name__ == "__main__":
  main()
