"""Tiles at 224 px: decoding per format, scan caches, ResNet50/EfficientNet.

Three measurements a histology user meets first, each side by side in one
run:

1. The folder input pipeline at 224 px, per file format. The same
   synthetic H&E-like tiles (3 classes of tissue cut from generated
   slides: pink stroma with fibre texture, white gaps, purple nuclei, and
   per-tile sensor noise, so that PNG and JPEG decode real content, not
   flat colour) are written as JPEG (quality 90), PNG (Pillow's default
   compression) and uncompressed TIFF (as NCT-CRC-HE-100K ships its
   tiles). Each folder feeds cfal's own training stream
   (`cfal.training.build.build` of `--dataset=folder:<path>
   --image_size=224 --augment=flip_rotate --batch_size=64`, then
   `build.train_iterator`), drained inside a compiled loop as the train
   loop drains it. The formats are timed round-robin, each sample on a
   fresh stream after untimed warm-up batches, one stream alive at a
   time. Images/s and the process's CPU seconds per image give how many
   such cores would feed one GPU training ResNet-50 (NVIDIA's published
   figures, `GPU_FIGURES`).
2. A folder's first start against a cached start: `datasets.load_data`
   of a folder of many small PNG files with an empty scan cache
   (`CFAL_CACHE_DIR` pointing at a new empty folder: Pillow decodes every
   file) and then again with the cache it wrote; cold and warm
   alternate.
3. Train steps of the Keras Applications backbones `resnet50` and
   `efficientnetv2_b0` (random initial weights: ImageNet weights train at
   the same speed) + the default CFAL head on the JPEG tiles: cfal's
   compiled loop (`bench.common.build_trainer`, train.py's `Steps`)
   against Keras `fit` of the same backbone and head as one Keras model
   (`bench.loop.keras_model`, default compile, the same tf.data stream),
   round-robin with the float32 matmuls of `bench.loop.matmul_configs`;
   the step's FLOPs are counted from the layer shapes
   (`bench.loop.forward_flops`, plus depthwise convolutions, which
   EfficientNet has and loop.py's backbones have not; train = 3x forward).

The files sit in the page cache (just written): the pipeline figures are
decoding, resizing and augmenting, not disk reads. The 1-minute load
average is recorded with every measurement: the machine is shared.

    .venv/bin/python bench/tiles.py           # 4 to 9 min on 2 shared cores
    .venv/bin/python bench/tiles.py --quick   # smoke run, ~25 s, no file

Prints markdown tables and writes bench/results/tiles.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gc
import os
import pathlib
import re
import sys
import tempfile
import time
from typing import Iterator, Sequence

STARTED = time.perf_counter()   # the budget counts imports too
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from cfal import cli  # noqa: E402  (before TensorFlow: its oneDNN setting)
cli.prepare_environment()
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

from bench import common, loop  # noqa: E402
from cfal.data import datasets, pipeline  # noqa: E402
from cfal.data.scan import CACHE_ENV_VAR, RACY_SECONDS  # noqa: E402
from cfal.training import build as build_lib  # noqa: E402
from cfal.training.config import TrainConfig  # noqa: E402

NAME = "tiles"
COMMAND = ".venv/bin/python bench/tiles.py"
PIPELINE_SIZE = 224
PIPELINE_BATCH = 64
AUGMENT = "flip_rotate"
# name -> (extension, Pillow save options).
FORMATS = {
    "JPEG": (".jpg", {"quality": 90}),
    "PNG": (".png", {}),
    "TIFF": (".tif", {}),
}
# Tissue classes: (nuclei per 1,000 px, tissue level: higher = less white).
TISSUES = {"dense": (4.0, 0.9), "stroma": (1.5, 0.7), "loose": (0.8, 0.3)}
SLIDE_SIDE = 1120          # a generated slide; tiles are cut from it
TILES_PER_SLIDE = 100      # random crops (with flips and noise) per slide
GPU_SOURCE = (
    "https://github.com/NVIDIA/DeepLearningExamples/tree/master/TensorFlow/"
    "Classification/ConvNets/resnet50v1.5#training-performance-nvidia-dgx-"
    "a100-8x-a100-40gb")
# NVIDIA's ResNet-50 v1.5 training throughput on one GPU (TensorFlow 20.06
# NGC container, images/s averaged over an epoch; the README above, its
# "Training performance results" tables). The first is the headline.
GPU_FIGURES = (
    ("A100 40GB, mixed precision + XLA, batch 256", 2375.0),
    ("A100 40GB, TF32 + XLA, batch 256", 909.0),
    ("V100 16GB, mixed precision + XLA, batch 256", 1270.0),
)
TARGET_VS_FIT = 1.0        # bench/loop.py's target for cfal against fit
TARGET_FLOP_FRACTION = 0.5  # bench/loop.py's target


@dataclasses.dataclass(frozen=True)
class Plan:
  """How much work each part does.

  Attributes:
    per_class: tiles per class, in each format.
    pipeline_warm_batches: batches of 64 each fresh stream gives untimed.
    pipeline_batches: batches of 64 per timed pipeline sample.
    pipeline_repeats: timed samples per format (median reported).
    scan_files: files in the scan folder.
    scan_repeats: cold and warm scans each.
    train_size: image side for the train steps.
    train_batch: batch size for the train steps.
    train_steps: steps per timed train sample (one compiled call / one
      `fit` call), one count per backbone: a sample of a few seconds.
    train_repeats: timed samples per train configuration.
    backbones: Keras Applications backbones to train.
    matmul_size: side of the square float32 matmul.
    matmuls_per_sample: products per timed matmul sample.
  """

  per_class: int
  pipeline_warm_batches: int
  pipeline_batches: int
  pipeline_repeats: int
  scan_files: int
  scan_repeats: int
  train_size: int
  train_batch: int
  train_steps: tuple[int, ...]
  train_repeats: int
  backbones: tuple[str, ...]
  matmul_size: int
  matmuls_per_sample: int

  def steps_for(self, backbone: str) -> int:
    return self.train_steps[self.backbones.index(backbone)]


FULL = Plan(per_class=700, pipeline_warm_batches=4, pipeline_batches=8,
            pipeline_repeats=5, scan_files=20_000, scan_repeats=3,
            train_size=224, train_batch=16, train_steps=(1, 4),
            train_repeats=5,
            backbones=("resnet50", "efficientnetv2_b0"), matmul_size=2048,
            matmuls_per_sample=6)
# The smoke run trains bench/loop.py's small "resnet" instead: tracing
# ResNet50 or EfficientNetV2-B0 alone takes about a minute on 2 cores.
QUICK = Plan(per_class=30, pipeline_warm_batches=1, pipeline_batches=1,
             pipeline_repeats=1, scan_files=600, scan_repeats=1,
             train_size=32, train_batch=4, train_steps=(1,), train_repeats=1,
             backbones=("resnet",), matmul_size=512, matmuls_per_sample=2)


def load_now() -> float:
  """The 1-minute load average."""
  return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------------------
# Synthetic tissue.


def smooth_noise(rng: np.random.Generator, side: int,
                 cell: int) -> np.ndarray:
  """float32 [side, side] in [0, 1]: uniform noise on a grid of `cell`
  pixels, interpolated bicubically (texture at that scale)."""
  small = rng.random((max(2, side // cell),) * 2, dtype=np.float32)
  image = Image.fromarray(small, "F").resize((side, side), Image.BICUBIC)
  return np.asarray(image)


def slide(rng: np.random.Generator, side: int, nuclei_per_kpx: float,
          tissue_level: float) -> np.ndarray:
  """float32 [side, side, 3] RGB 0-255: an H&E-like field of tissue.

  Eosin-pink tissue with fibre texture at two scales and white gaps where
  a coarse density field is low; haematoxylin-purple elliptic nuclei
  (blurred, of varying stain) scattered over the tissue.
  """
  density = np.clip((smooth_noise(rng, side, 96) - 0.5) * 3 + tissue_level,
                    0, 1)
  fibres = (0.6 * smooth_noise(rng, side, 6)
            + 0.4 * smooth_noise(rng, side, 24))
  mask = Image.new("L", (side, side), 0)
  draw = ImageDraw.Draw(mask)
  count = int(nuclei_per_kpx * side * side / 1000)
  for x, y, a, b, stain in zip(
      rng.random(count) * side, rng.random(count) * side,
      rng.uniform(2.5, 6.0, count), rng.uniform(2.0, 4.5, count),
      rng.integers(150, 256, count)):
    draw.ellipse((x - a, y - b, x + a, y + b), fill=int(stain))
  nuclei = np.asarray(mask.filter(ImageFilter.GaussianBlur(1.2)),
                      np.float32) / 255 * (density > 0.2)
  white = np.array([242, 238, 244], np.float32)
  pink = np.array([226, 140, 184], np.float32)
  purple = np.array([88, 52, 136], np.float32)
  tissue = pink * (0.75 + 0.4 * fibres[..., None])
  rgb = white + (tissue - white) * density[..., None]
  return rgb + (purple - rgb) * nuclei[..., None]


def tiles(rng: np.random.Generator, count: int, nuclei_per_kpx: float,
          tissue_level: float) -> Iterator[np.ndarray]:
  """`count` uint8 [224, 224, 3] tiles: random crops of generated slides,
  randomly flipped and turned, with Gaussian noise (sigma 4) of their own."""
  source = None
  for i in range(count):
    if i % TILES_PER_SLIDE == 0:
      source = slide(rng, SLIDE_SIDE, nuclei_per_kpx, tissue_level)
    top, left = rng.integers(0, SLIDE_SIDE - PIPELINE_SIZE, 2)
    tile = source[top:top + PIPELINE_SIZE, left:left + PIPELINE_SIZE]
    tile = np.rot90(tile[:, ::-1] if rng.random() < 0.5 else tile,
                    int(rng.integers(4)))
    noisy = tile + rng.normal(0.0, 4.0, tile.shape).astype(np.float32)
    yield np.clip(noisy, 0, 255).astype(np.uint8)


def save(pixels: np.ndarray, path: pathlib.Path, fmt: str,
         options: dict) -> None:
  """Writes `pixels` to `path` in Pillow format `fmt` (an Image of its
  own: Pillow images are not safe to save from two threads at once)."""
  Image.fromarray(pixels).save(path, fmt, **options)


def write_tile_folders(root: pathlib.Path, per_class: int
                       ) -> dict[str, pathlib.Path]:
  """root/<format>/<class>/<i>.<ext>: the same tiles in every format.

  Returns each format's folder. Encoding runs on 2 threads (Pillow's
  encoders release the GIL).
  """
  folders = {name: root / name for name in FORMATS}
  rng = np.random.default_rng(12)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    jobs = []
    for label, (nuclei, level) in TISSUES.items():
      for folder in folders.values():
        (folder / label).mkdir(parents=True)
      for i, tile in enumerate(tiles(rng, per_class, nuclei, level)):
        for name, (extension, options) in FORMATS.items():
          path = folders[name] / label / f"{i:05d}{extension}"
          jobs.append(pool.submit(save, tile, path, name, options))
    for job in jobs:
      job.result()
  return folders


def write_small_pngs(root: pathlib.Path, count: int, classes: int = 4,
                     side: int = 32) -> pathlib.Path:
  """root/class_<k>/<i>.png: `count` small noisy RGB PNG files."""
  rng = np.random.default_rng(5)
  for k in range(classes):
    (root / f"class_{k}").mkdir(parents=True)
  ramp = np.linspace(0, 200, side, dtype=np.float32)[None, :, None]
  for i in range(count):
    pixels = ramp + rng.normal(0, 20, (side, side, 3)).astype(np.float32)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        root / f"class_{i % classes}" / f"{i:06d}.png")
  return root


def folder_bytes(folder: pathlib.Path) -> tuple[int, int]:
  """(number of files, total bytes) below `folder`."""
  sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()]
  return len(sizes), sum(sizes)


# ---------------------------------------------------------------------------
# 1. The folder pipeline per format.


@tf.function(autograph=False)
def pull(iterator, num_batches: tf.Tensor) -> tf.Tensor:
  """Takes `num_batches` batches inside a compiled loop, as the train loop
  does, summing every image so that none is skipped."""
  def body(i, total):
    images, _ = next(iterator)
    return i + 1, total + tf.reduce_sum(images)
  return tf.while_loop(lambda i, _: i < num_batches, body,
                       (tf.constant(0), tf.constant(0.0)))[1]


def pipeline_config(folder: pathlib.Path) -> TrainConfig:
  """train.py --dataset=folder:<folder> --image_size=224
  --augment=flip_rotate --batch_size=64 (the default seed_cnn model: only
  the stream is used)."""
  base = TrainConfig()
  return dataclasses.replace(
      base,
      data=dataclasses.replace(base.data, name=f"folder:{folder}",
                               image_size=PIPELINE_SIZE, augment=AUGMENT),
      run=dataclasses.replace(base.run, batch_size=PIPELINE_BATCH))


def measure_pipeline(folders: dict[str, pathlib.Path], plan: Plan) -> dict:
  """Images/s and CPU s per image of each format's training stream.

  Every sample gets a fresh stream (a run's one iterator, from step 0),
  pulls `plan.pipeline_warm_batches` untimed (start-up, autotuning), then
  `plan.pipeline_batches` timed, and is deleted before the next format's
  stream starts: one stream works at a time. (Streams kept alive side by
  side go on filling their autotuned prefetch buffers, which grow to many
  batches, while another format is timed: an earlier version of this
  program timed some 8-batch samples at 20x the median that way.)
  """
  loads = {"start": load_now()}
  builts, scans = {}, {}
  for name, folder in folders.items():
    began = time.perf_counter()
    data = datasets.load_data(pipeline_config(folder).data)
    scans[name] = time.perf_counter() - began
    builts[name] = build_lib.build(pipeline_config(folder), data=data)
  warm_batches = tf.constant(plan.pipeline_warm_batches)
  batches = tf.constant(plan.pipeline_batches)
  for built in builts.values():   # trace `pull` outside any timed stream
    float(pull(common.train_iterator(built), tf.constant(0)))
  gc.collect()
  warm: dict[str, list[float]] = {name: [] for name in builts}
  wall: dict[str, list[float]] = {name: [] for name in builts}
  cpu: dict[str, list[float]] = {name: [] for name in builts}
  for _ in range(plan.pipeline_repeats):
    for name, built in builts.items():
      began = time.perf_counter()
      stream = common.train_iterator(built)
      float(pull(stream, warm_batches))
      warm[name].append(time.perf_counter() - began)
      began, began_cpu = time.perf_counter(), time.process_time()
      float(pull(stream, batches))
      wall[name].append(time.perf_counter() - began)
      cpu[name].append(time.process_time() - began_cpu)
      del stream
      gc.collect()
  loads["end"] = load_now()
  images = plan.pipeline_batches * PIPELINE_BATCH
  out = {"loads": loads, "images_per_sample": images,
         "warm_batches": plan.pipeline_warm_batches, "formats": {}}
  for name, folder in folders.items():
    files, size = folder_bytes(folder)
    rates = [images / s for s in wall[name]]
    out["formats"][name] = {
        "files": files, "mean_kib": size / files / 1024,
        "images_per_second": images / common.median(wall[name]),
        "rates": rates, "wall_seconds": wall[name], "cpu_seconds": cpu[name],
        "cpu_ms_per_image": 1000 * common.median(cpu[name]) / images,
        "start_and_warm_seconds": warm[name],
        "load_data_cold_seconds": scans[name]}
  return out


def cores_to_feed(fmt: dict, gpu_rate: float) -> tuple[float, float]:
  """Cores of this machine one GPU at `gpu_rate` images/s would need:
  (by CPU time per image, by wall-clock images/s on 2 cores)."""
  by_cpu = gpu_rate * fmt["cpu_ms_per_image"] / 1000
  by_wall = gpu_rate / (fmt["images_per_second"] / (os.cpu_count() or 2))
  return by_cpu, by_wall


# ---------------------------------------------------------------------------
# 2. Scans: cold cache against warm.


def reused_files(notes: Sequence[str]) -> int:
  """How many files a load took from the scan cache, from its notes
  ("..., 19,998 unchanged since checked (...)"); 0 without such a note."""
  for note in notes:
    found = re.search(r"([\d,]+) unchanged since checked", note)
    if found:
      return int(found.group(1).replace(",", ""))
  return 0


def measure_scan(root: pathlib.Path, cache_root: pathlib.Path,
                 plan: Plan) -> dict:
  """`datasets.load_data` of folder:<root> with an empty scan cache, then
  with the cache that scan wrote, `plan.scan_repeats` times each.

  Starts `scan.RACY_SECONDS` after the newest file was written: the cache
  does not keep files modified that shortly before a scan (their time
  stamps cannot tell a rewrite from the original), and a real folder is
  older than that.
  """
  newest = max(p.stat().st_mtime for p in root.rglob("*.png"))
  time.sleep(max(0.0, newest + RACY_SECONDS + 0.5 - time.time()))
  loads = {"start": load_now()}
  config = datasets.DataConfig(name=f"folder:{root}")
  cold, warm, reused = [], [], []
  previous = os.environ.get(CACHE_ENV_VAR)
  try:
    for repeat in range(plan.scan_repeats):
      os.environ[CACHE_ENV_VAR] = str(cache_root / f"scan-{repeat}")
      for kind in (cold, warm):
        began = time.perf_counter()
        bundle = datasets.load_data(config)
        kind.append(time.perf_counter() - began)
        reused.append(reused_files(bundle.notes))
  finally:
    if previous is None:
      os.environ.pop(CACHE_ENV_VAR, None)
    else:
      os.environ[CACHE_ENV_VAR] = previous
  loads["end"] = load_now()
  return {"files": len(bundle.source), "cold_seconds": cold,
          "warm_seconds": warm, "cold": common.median(cold),
          "warm": common.median(warm), "reused_cold": reused[0::2],
          "reused_warm": reused[1::2], "loads": loads}


# ---------------------------------------------------------------------------
# 3. Train steps: cfal's loop against Keras fit.


def depthwise_flops(model: keras.Model) -> float:
  """Forward FLOPs per example of depthwise convolutions (2 * MACs),
  which `bench.loop.forward_flops` leaves out: Keras 3's DepthwiseConv2D
  is not a Conv2D. Walks nested models as it does."""
  total = 0.0
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      total += depthwise_flops(layer)
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
      _, height, width, _ = layer.output.shape
      total += 2.0 * height * width * np.prod(layer.kernel.shape)
  return float(total)


def train_config(name: str, folder: pathlib.Path, plan: Plan) -> TrainConfig:
  """bench/loop.py's config for `name` (train.py's defaults otherwise) on
  the tile folder at `plan.train_size` px with flips and turns."""
  config = loop.train_config(name, plan.train_batch)
  return dataclasses.replace(config, data=dataclasses.replace(
      config.data, name=f"folder:{folder}", image_size=plan.train_size,
      augment=AUGMENT))


def cfal_side(name: str, config: TrainConfig, data: datasets.DataBundle,
              plan: Plan) -> tuple[loop.Config, float]:
  """cfal's loop, `plan.steps_for(name)` steps per compiled call; and
  the train FLOPs per example of its backbone."""
  trainer = common.build_trainer(config, data=data)
  head = trainer.built.head
  initial = head.prototypes.numpy()
  wired = loop.CfalTrainer(
      steps=trainer.steps, iterator=trainer.iterator, batch=plan.train_batch,
      trained=lambda: not np.allclose(head.prototypes.numpy(), initial))
  backbone = trainer.built.backbone
  flops = 3.0 * (loop.forward_flops(backbone) + depthwise_flops(backbone))
  count = plan.steps_for(name)
  return loop.cfal_config(name, wired, count, count), flops


def fit_side(name: str, config: TrainConfig, data: datasets.DataBundle,
             plan: Plan) -> loop.Config:
  """Keras `fit` of the same backbone + head (bench/loop.py's model,
  default compile) on the same training stream, `plan.steps_for(name)`
  steps per `fit` call, timed from its first batch (`loop.FitTimer`)."""
  batch, count = plan.train_batch, plan.steps_for(name)
  model, layer = loop.keras_model(name, data, jit_compile=None,
                                  steps_per_execution=1, batch=batch)
  dataset = pipeline.train_dataset(
      data.source, data.train_indices, global_batch_size=batch,
      seed=config.run.seed, augment=config.data.augment).map(
          tf.autograph.experimental.do_not_convert(
              lambda images, labels: ((images, labels), labels)))
  result = loop.Config(
      backbone=name, trainer="keras fit", mode="default compile", loop=1,
      batch=batch, steps=count, warm_steps=1,
      sample=lambda: None, warm=lambda: None,
      check=loop.trained_check(layer), inner=[])
  timer = loop.FitTimer(result.inner)

  def fit(source: tf.data.Dataset, steps: int | None,
          callbacks: list[keras.callbacks.Callback]) -> None:
    history = model.fit(source, epochs=1, steps_per_epoch=steps, verbose=0,
                        callbacks=callbacks)
    result.losses.append(float(history.history["loss"][-1]))

  result.sample = lambda: fit(dataset, count, [timer])
  result.warm = lambda: fit(dataset.take(1), None, [])
  return result


def alternating(configs: Sequence[loop.Config],
                repeats: int) -> dict[str, list[float]]:
  """`bench.common.interleaved` rounds, the order reversed every other
  round, so a load that drifts during a round favours no configuration."""
  times: dict[str, list[float]] = {c.label: [] for c in configs}
  for round_ in range(repeats):
    order = configs if round_ % 2 == 0 else configs[::-1]
    for label, seconds in common.interleaved(
        {c.label: c.sample for c in order}, repeats=1, warmup=0).items():
      times[label] += seconds
  return times


def measure_training(folder: pathlib.Path, plan: Plan) -> dict:
  """Each backbone's cfal and fit rows, timed round-robin with the
  matmuls (which run in every backbone's rounds)."""
  matmuls = loop.matmul_configs(plan.matmul_size)
  for matmul in matmuls:
    matmul.warm()
    # Several products per sample (0.3 s to 1 s here): a sample then sees
    # much the same neighbours' load as the train samples it alternates
    # with, rather than a lucky or unlucky instant.
    matmul.sample = (lambda once=matmul.sample: [
        once() for _ in range(plan.matmuls_per_sample)])
    matmul.flops *= plan.matmuls_per_sample
  rows, loads, phases, ceilings = [], {}, {}, {}
  data = None
  for name in plan.backbones:
    loads[name] = {"start": load_now()}
    config = train_config(name, folder, plan)
    data = data or datasets.load_data(config.data)
    began = time.perf_counter()
    cfal, flops = cfal_side(name, config, data, plan)
    configs = [cfal, fit_side(name, config, data, plan)]
    warm = loop.warm_up(configs)
    phases[f"{name} build+trace"] = time.perf_counter() - began
    began = time.perf_counter()
    times = alternating(configs + matmuls, plan.train_repeats)
    phases[f"{name} timed"] = time.perf_counter() - began
    loads[name]["end"] = load_now()
    group = [loop.result_row(c, times[c.label], warm.get(c.label, 0.0),
                             flops) for c in configs + matmuls]
    for row in group:
      row["round_of"] = name
    ceilings[name] = loop.matmul_rates(group)
    rows += group
    print(f"{name}: " + ", ".join(
        f"{r['trainer']} {r['examples_per_second']:.1f} ex/s"
        for r in rows[-len(times):] if "examples_per_second" in r),
          flush=True)
  return {"rows": rows, "loads": loads, "phases": phases,
          "ceilings": ceilings}


# ---------------------------------------------------------------------------
# Reporting.


def pipeline_table(result: dict) -> str:
  formats = result["formats"]
  first = formats["JPEG"]["images_per_second"]
  gpu_name, gpu_rate = GPU_FIGURES[0]
  del gpu_name
  body = []
  for name, f in formats.items():
    by_cpu, by_wall = cores_to_feed(f, gpu_rate)
    body.append([
        name, f"{f['files']:,}", f"{f['mean_kib']:.0f}",
        f"{f['images_per_second']:.0f} ({min(f['rates']):.0f} to "
        f"{max(f['rates']):.0f})",
        f"{f['images_per_second'] / first:.2f}",
        f"{f['cpu_ms_per_image']:.2f}", f"{by_cpu:.0f}", f"{by_wall:.0f}",
        f"{f['load_data_cold_seconds']:.1f}"])
  return common.markdown_table(
      ["format", "files", "KiB/file", "images/s on 2 cores (range)",
       "x JPEG", "CPU ms/image", "cores per A100 (CPU time)",
       "cores per A100 (wall)", "first load_data s"], body)


def gpu_table(result: dict) -> str:
  formats = result["formats"]
  body = [[gpu, f"{rate:.0f}"]
          + [f"{cores_to_feed(f, rate)[0]:.0f}" for f in formats.values()]
          for gpu, rate in GPU_FIGURES]
  return common.markdown_table(
      ["GPU training ResNet-50 v1.5 (NVIDIA)", "images/s"]
      + [f"cores, {name}" for name in formats], body)


def scan_table(result: dict) -> str:
  cold, warm = result["cold"], result["warm"]
  return common.markdown_table(
      ["files", "first start (empty cache) s", "cached start s",
       "first / cached", "files/s, first start",
       "files from the cache (first, cached)", "load average"],
      [[f"{result['files']:,}", f"{cold:.2f}", f"{warm:.2f}",
        f"{cold / warm:.1f}x", f"{result['files'] / cold:,.0f}",
        f"{min(result['reused_cold']):,}, {min(result['reused_warm']):,}",
        f"{result['loads']['start']:.1f} -> {result['loads']['end']:.1f}"]])


def train_table(result: dict, plan: Plan) -> str:
  body = []
  rows = [r for r in result["rows"] if r["trainer"] != "matmul"]
  for r in rows:
    fit = next(x for x in rows if x["backbone"] == r["backbone"]
               and x["trainer"] == "keras fit")
    load = result["loads"][r["backbone"]]
    body.append([
        r["backbone"], f"{plan.train_size}", r["batch"], r["trainer"],
        r["mode"], r["steps_per_sample"], f"{r['examples_per_second']:.2f}",
        f"{r['examples_per_second'] / fit['examples_per_second']:.2f}",
        f"{r['trace_seconds']:.0f}",
        f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}",
        "yes" if r["head_trained"] else "NO",
        f"{load['start']:.1f} -> {load['end']:.1f}"])
  return common.markdown_table(
      ["backbone", "px", "batch", "trainer", "mode", "steps/call",
       "examples/s", "x Keras fit", "trace s", "loss first -> last",
       "head trained", "load average"], body, align="lrrllrrrrlll")


def ceiling(result: dict, name: str) -> tuple[str, float]:
  """The fastest matmul kind in `name`'s rounds and its FLOP/s."""
  rates = result["ceilings"][name]
  kind = max(rates, key=rates.get)
  return kind, rates[kind]


def compute_table(result: dict) -> str:
  body = []
  for r in result["rows"]:
    if r["trainer"] != "cfal":
      continue
    kind, top = ceiling(result, r["backbone"])
    rates = result["ceilings"][r["backbone"]]
    achieved = r["examples_per_second"] * r["train_flops_per_example"]
    body.append([r["backbone"], f"{r['train_flops_per_example'] / 1e9:.2f}",
                 f"{r['examples_per_second']:.2f}", f"{achieved / 1e9:.1f}",
                 ", ".join(f"{k} {v / 1e9:.0f}" for k, v in rates.items()),
                 f"{achieved / top:.0%} ({kind})"])
  return common.markdown_table(
      ["backbone", "train GFLOP/example", "cfal examples/s",
       "achieved GFLOP/s", "matmul GFLOP/s in the same rounds",
       "x fastest matmul"], body)


def verdict(value: float, target: float) -> str:
  return "met" if value >= target else f"missed by {target / value:.2f}x"


def findings(pipe: dict, scan: dict, train: dict, plan: Plan) -> list[str]:
  formats = pipe["formats"]
  gpu_name, gpu_rate = GPU_FIGURES[0]
  rates = ", ".join(
      f"{name} {f['images_per_second']:.0f} images/s "
      f"({f['cpu_ms_per_image']:.1f} CPU ms per image)"
      for name, f in formats.items())
  cores = ", ".join(f"{name} {cores_to_feed(f, gpu_rate)[0]:.0f}"
                    for name, f in formats.items())
  out = [
      f"Folder pipeline at {PIPELINE_SIZE} px (batch {PIPELINE_BATCH}, "
      f"{AUGMENT}) on {os.cpu_count()} shared cores (load average "
      f"{pipe['loads']['start']:.1f} -> {pipe['loads']['end']:.1f}): "
      f"{rates}.",
      f"Feeding one {gpu_name.split(',')[0]} training ResNet-50 "
      f"({gpu_rate:.0f} images/s, NVIDIA's published {gpu_name} figure, "
      f"{GPU_SOURCE}) would take about {cores} cores like these (by CPU "
      f"time per image, decoding on the CPU as cfal does; NVIDIA's own "
      f"figure decodes JPEG with DALI, partly on the GPU).",
      f"Scan of {scan['files']:,} files: first start (empty scan cache) "
      f"{scan['cold']:.2f} s, cached start {scan['warm']:.2f} s, "
      f"{scan['cold'] / scan['warm']:.1f}x faster, {min(scan['reused_warm']):,}"
      f" files from the cache (load average "
      f"{scan['loads']['start']:.1f} -> {scan['loads']['end']:.1f}).",
  ]
  rows = train["rows"]
  for name in plan.backbones:
    kind, top = ceiling(train, name)
    own = {r["trainer"]: r for r in rows if r["backbone"] == name}
    cfal, fit = own["cfal"], own["keras fit"]
    ratio = cfal["examples_per_second"] / fit["examples_per_second"]
    load = train["loads"][name]
    out.append(
        f"{name} at {plan.train_size} px, batch {plan.train_batch}: cfal's "
        f"loop {cfal['examples_per_second']:.2f} examples/s, Keras fit "
        f"{fit['examples_per_second']:.2f}: {loop.versus(cfal, fit)} "
        f"(target >= {TARGET_VS_FIT:.1f}x as in bench/loop.py: "
        f"{verdict(ratio, TARGET_VS_FIT)}; load average "
        f"{load['start']:.1f} -> {load['end']:.1f}).")
    achieved = cfal["examples_per_second"] * cfal["train_flops_per_example"]
    sentence = (
        f"{name}: cfal's step reaches {achieved / top:.0%} of the "
        f"{top / 1e9:.0f} GFLOP/s of the fastest float32 "
        f"{plan.matmul_size}x{plan.matmul_size} matmul ({kind}) timed in "
        f"the same rounds ({achieved / 1e9:.0f} GFLOP/s; "
        f"{cfal['train_flops_per_example'] / 1e9:.1f} GFLOP per example from "
        f"the conv/dense shapes, train = 3x forward)")
    if name == "resnet50":
      sentence += (f": target {TARGET_FLOP_FRACTION:.0%} as in bench/loop.py "
                   f"{verdict(achieved / top, TARGET_FLOP_FRACTION)}")
    out.append(sentence + ".")
  return out


def make_tables(pipe: dict, scan: dict, train: dict, plan: Plan
                ) -> list[dict]:
  repro = f"Reproduce with `{COMMAND}`."
  gpu_name, gpu_rate = GPU_FIGURES[0]
  return [
      {"title": f"Folder pipeline at {PIPELINE_SIZE} px per file format",
       "markdown": pipeline_table(pipe),
       "note": (f"{plan.per_class * len(TISSUES):,} synthetic H&E-like "
                f"tiles per format ({len(TISSUES)} classes), the same pixels "
                f"in each: JPEG quality 90, PNG at Pillow's default "
                f"compression, TIFF uncompressed. cfal's training stream "
                f"(build + train_iterator of --dataset=folder:<path> "
                f"--image_size={PIPELINE_SIZE} --augment={AUGMENT} "
                f"--batch_size={PIPELINE_BATCH}) drained in a compiled loop; "
                f"median of {plan.pipeline_repeats} round-robin samples of "
                f"{plan.pipeline_batches} batches, each on a fresh stream "
                f"after {plan.pipeline_warm_batches} untimed batches, one "
                f"stream alive at a time. CPU ms/image:"
                f" the process's CPU time over a timed sample. Cores per A100:"
                f" {gpu_rate:.0f} images/s ({gpu_name}) x CPU time per image,"
                f" or / (images/s per core). First load_data: the folder's "
                f"first scan (Pillow checks every file). Files in the page "
                f"cache. Load average {pipe['loads']['start']:.1f} -> "
                f"{pipe['loads']['end']:.1f}. {repro}")},
      {"title": "Cores of this machine to feed one GPU training ResNet-50",
       "markdown": gpu_table(pipe),
       "note": (f"GPU throughputs: NVIDIA DeepLearningExamples, ResNet-50 "
                f"v1.5 for TensorFlow, training performance on 1 GPU "
                f"(TensorFlow 20.06 NGC container), {GPU_SOURCE}. Cores = "
                f"GPU images/s x this pipeline's CPU seconds per image; "
                f"NVIDIA's pipeline decodes JPEG with DALI (partly on the "
                f"GPU), cfal decodes on the CPU. {repro}")},
      {"title": "Scan: first start against cached start",
       "markdown": scan_table(scan),
       "note": (f"`datasets.load_data` of a folder of {scan['files']:,} "
                f"32x32 RGB PNG files in 4 classes (listing, Pillow's full "
                f"check of every file, split); first start: "
                f"{CACHE_ENV_VAR} pointing at a new empty folder; cached "
                f"start: the same again. Medians of {plan.scan_repeats} "
                f"alternating pairs, the first {RACY_SECONDS + 0.5:g} s "
                f"after the last file was written (the cache keeps no file "
                f"modified less than {RACY_SECONDS:g} s before a scan); "
                f"'files from the cache' is the fewest of the repeats. Files "
                f"in the page cache. {repro}")},
      {"title": "Train steps: cfal's loop against Keras fit",
       "markdown": train_table(train, plan),
       "note": (f"Random initial weights, default CFAL head (embedding 64), "
                f"train.py's optimizer (Adam 1e-3, cosine decay), the JPEG "
                f"tiles at {plan.train_size} px with {AUGMENT}. cfal: "
                f"`Steps` in function mode (--step_mode=auto on CPU); Keras: "
                f"`fit` of the same backbone and head "
                f"(bench/loop.py's model, default compile, no XLA on CPU), "
                f"timed from its first batch; 'steps/call': steps per "
                f"compiled call or per `fit` call, one call per sample. "
                f"Medians of {plan.train_repeats} round-robin samples "
                f"(with the matmuls; the order reversed every other round) "
                f"after a warm-up call; 'trace s' is the "
                f"warm-up's excess over a step. Keras's last loss is lower "
                f"because every `fit` call starts the stream again at its "
                f"first batches (as in bench/loop.py), which it learns; "
                f"cfal's loop goes on through new ones. {repro}")},
      {"title": "Compute limit",
       "markdown": compute_table(train),
       "note": (f"Train FLOPs per example from the layer shapes "
                f"(bench/loop.py's forward_flops plus depthwise "
                f"convolutions, 2 x MACs, x3 for forward + backward). "
                f"Matmuls: float32 {plan.matmul_size}x{plan.matmul_size} "
                f"(bench/loop.py's three kinds), {plan.matmuls_per_sample} "
                f"products per sample, medians over the rounds "
                f"of the backbone they were timed with; the fastest is "
                f"the ceiling. {repro}")},
  ]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: few tiles and files, bench/loop.py's "
                           "small resnet at 32 px; prints, leaves "
                           "bench/results/tiles.json alone")
  args = parser.parse_args()
  plan = QUICK if args.quick else FULL
  load_before = os.getloadavg()
  tf.get_logger().setLevel("ERROR")
  phases = {}
  with tempfile.TemporaryDirectory(prefix="cfal-bench-tiles-") as tmp:
    work = pathlib.Path(tmp)
    # Scan caches of this run stay in the temporary folder.
    os.environ[CACHE_ENV_VAR] = str(work / "cache")
    began = time.perf_counter()
    folders = write_tile_folders(work / "tiles", plan.per_class)
    phases["write tiles"] = time.perf_counter() - began
    print(f"Wrote {plan.per_class * len(TISSUES):,} tiles x "
          f"{len(FORMATS)} formats in {phases['write tiles']:.0f} s.",
          flush=True)
    began = time.perf_counter()
    pipe = measure_pipeline(folders, plan)
    phases["pipeline"] = time.perf_counter() - began
    print("Pipeline: " + ", ".join(
        f"{n} {f['images_per_second']:.0f} images/s"
        for n, f in pipe["formats"].items()), flush=True)
    began = time.perf_counter()
    small = write_small_pngs(work / "small", plan.scan_files)
    phases["write scan files"] = time.perf_counter() - began
    began = time.perf_counter()
    scan = measure_scan(small, work / "scan-caches", plan)
    phases["scan"] = time.perf_counter() - began
    print(f"Scan of {scan['files']:,} files: cold {scan['cold']:.2f} s, "
          f"warm {scan['warm']:.2f} s.", flush=True)
    began = time.perf_counter()
    train = measure_training(folders["JPEG"], plan)
    phases["training"] = time.perf_counter() - began
  seconds = time.perf_counter() - STARTED
  tables = make_tables(pipe, scan, train, plan)
  notes = findings(pipe, scan, train, plan)
  if args.quick:
    notes.insert(0, "Smoke run (--quick): tiny sizes, single samples.")
  common.finish(
      NAME, command=COMMAND, tables=tables, findings=notes,
      results={"plan": dataclasses.asdict(plan), "pipeline": pipe,
               "scan": scan, "training": train, "phase_seconds": phases,
               "gpu_figures": GPU_FIGURES, "gpu_source": GPU_SOURCE,
               "cpu_seconds": time.process_time()},
      seconds=seconds, load_before=load_before, save=not args.quick,
      timing=", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) + "; ")
  # Destroying tf.data iterators can hold teardown for a while; all is
  # written.
  sys.stdout.flush()
  os._exit(0)


if __name__ == "__main__":
  main()
