"""`DataConfig.cache`: decoded images kept in memory, the stream unchanged.

`test_folder_pipeline_throughput` (slow) measures images/s of the folder
pipeline with and without the cache on 2,000 JPEG tiles of 224x224:
`pytest -m slow -s tests/data/test_cache_option.py` prints the numbers.
"""

from __future__ import annotations

import dataclasses
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from cfal.data import datasets, pipeline

SIZE = 8


def write_tiles(root, count: int, side: int = 10, fmt: str = "PNG") -> None:
  rng = np.random.default_rng(7)
  yy, xx = np.mgrid[0:side, 0:side]
  for i in range(count):
    cls = f"class{i % 3}"
    (root / cls).mkdir(parents=True, exist_ok=True)
    wave = 128 + 60 * np.sin(xx / (3 + i % 5) + i)[..., None]
    noise = rng.normal(0, 25, (side, side, 3))
    pixels = np.clip(wave + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(
        root / cls / f"{i:05d}.{fmt.lower().replace('jpeg', 'jpg')}", fmt)


def configs(root, **changes) -> tuple[datasets.DataConfig, ...]:
  plain = datasets.DataConfig(name=f"folder:{root}", image_size=SIZE,
                              validation_split=0.2, augment="flip_rotate",
                              **changes)
  return plain, dataclasses.replace(plain, cache=True)


def batches(bundle, steps: int, start_step: int = 0, batch: int = 6):
  ds = pipeline.train_dataset(
      bundle.source, bundle.train_indices, global_batch_size=batch, seed=4,
      start_step=start_step, augment=bundle.config.augment)
  return [(x.numpy(), y.numpy()) for x, y in ds.take(steps)]


def test_cache_gives_the_same_batches(tmp_path):
  root = tmp_path / "tiles"
  write_tiles(root, 30)
  plain_config, cached_config = configs(root, imbalance_ratio=2.0)
  plain = datasets.load_data(plain_config)
  cached = datasets.load_data(cached_config)
  assert plain.source.load_example is not None
  assert cached.source.load_batch is not None
  assert cached.source.load_example is None
  np.testing.assert_array_equal(cached.train_indices, plain.train_indices)
  assert any(n.startswith("--cache: ") for n in cached.notes)
  # Three epochs and a resumed stream: the same pixels in the same order.
  for start in (0, 5):
    for (x, y), (cx, cy) in zip(batches(plain, 12, start),
                                batches(cached, 12, start)):
      np.testing.assert_array_equal(cx, x)
      np.testing.assert_array_equal(cy, y)
  for split in (plain.validation_indices, plain.train_indices):
    want = list(pipeline.eval_dataset(plain.source, split, batch_size=4))
    got = list(pipeline.eval_dataset(cached.source, split, batch_size=4))
    for (x, y), (cx, cy) in zip(want, got):
      np.testing.assert_array_equal(cx.numpy(), x.numpy())
      np.testing.assert_array_equal(cy.numpy(), y.numpy())
  # The files are no longer needed.
  shutil.rmtree(root)
  assert len(batches(cached, 6)) == 6


def test_cache_refuses_what_the_machine_cannot_hold(tmp_path):
  root = tmp_path / "tiles"
  write_tiles(root, 9)
  bundle = datasets.load_data(configs(root)[0])
  needed = 9 * SIZE * SIZE * 3 * 4
  with pytest.raises(ValueError) as err:
    pipeline.cached_source(bundle.source, np.arange(9),
                           memory_bytes=4 * needed - 4)
  message = str(err.value)
  assert "\n" not in message
  assert message.startswith("--cache would keep 0.0 GB of decoded images "
                            "(9 of 8x8x3 float32) in memory, over a quarter")
  assert message.endswith("drop --cache or use a smaller --image_size.")
  pipeline.cached_source(bundle.source, np.arange(9),
                         memory_bytes=4 * needed)


def test_in_memory_sets_are_left_as_they_are():
  source = pipeline.array_source(np.zeros((4, 2, 2), np.uint8),
                                 np.arange(4) % 2, ("a", "b"))
  assert pipeline.cached_source(source, np.arange(4)) is source


def throughput(bundle, steps: int = 30, batch: int = 64) -> float:
  stream = iter(pipeline.train_dataset(
      bundle.source, bundle.train_indices, global_batch_size=batch, seed=0,
      augment="flip_rotate"))
  next(stream)
  start = time.perf_counter()
  for _ in range(steps):
    next(stream)
  return steps * batch / (time.perf_counter() - start)


@pytest.mark.slow
def test_folder_pipeline_throughput(tmp_path):
  root = tmp_path / "tiles"
  write_tiles(root, 2000, side=224, fmt="JPEG")
  for size in (224, 112):
    plain_config, cached_config = configs(root)
    plain_config = dataclasses.replace(plain_config, image_size=size)
    cached_config = dataclasses.replace(cached_config, image_size=size)
    plain = datasets.load_data(plain_config)
    start = time.perf_counter()
    cached = datasets.load_data(cached_config)
    filled = time.perf_counter() - start
    np.testing.assert_array_equal(batches(cached, 2, batch=64)[1][0],
                                  batches(plain, 2, batch=64)[1][0])
    without, with_cache = throughput(plain), throughput(cached)
    print(f"\n{size}x{size}: {without:,.0f} images/s decoding, "
          f"{with_cache:,.0f} images/s cached (cache filled in "
          f"{filled:.1f} s)")
    assert with_cache > without
