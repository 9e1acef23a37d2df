"""Every bad input to train.py: its exact one-line message and exit code.

train.py's `main` runs in-process with real flags (exit 2 for usage errors,
1 for data errors); what it prints on stderr is checked whole.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cfal.heads import registry
from cfal.training.runner import train
from support.training import small_config, train_script

TRAIN = train_script()
COMMON = ["--train_steps=2", "--steps_per_loop=1", "--batch_size=8",
          "--embedding_dim=8", "--projector_points=10"]


def run_main(capsys, logdir, *flags) -> tuple[int, list[str], str]:
  """Runs train.py's main with `flags`; returns (exit code, stderr lines,
  stdout)."""
  capsys.readouterr()
  try:
    TRAIN.FLAGS(["train.py", f"--logdir={logdir}", *COMMON, *flags])
    code = TRAIN.main(["train.py"])
  finally:
    TRAIN.FLAGS.unparse_flags()
  out = capsys.readouterr()
  return code, out.err.strip().splitlines(), out.out


def write_folder(root, classes: dict[str, int], *, modes=("L",), size=20,
                 broken: int = 0) -> None:
  """Real PNG files: `classes` maps a class name to its image count."""
  rng = np.random.default_rng(0)
  for c, (name, count) in enumerate(classes.items()):
    (root / name).mkdir(parents=True)
    for i in range(count):
      mode = modes[i % len(modes)]
      shape = (size, size) if mode == "L" else (size, size, 3)
      pixels = (rng.random(shape) * 100 + 60 * c).astype(np.uint8)
      Image.fromarray(pixels, mode).save(root / name / f"{i}.png")
  for i in range(broken):
    good = (root / name / "0.png").read_bytes()
    (root / name / f"broken{i}.png").write_bytes(good[:len(good) // 3])


HEADS = ", ".join(sorted(registry.HEADS))


@pytest.mark.parametrize("flags, message", [
    (["--backbone=nope"], "--backbone=nope: unknown backbone 'nope'; valid "
     "names: seed_cnn, notebook_cnn, prelu_cnn, resnet, cct, resnet50, "
     "densenet121, efficientnetv2_b0, efficientnetv2_s, convnext_tiny, mobilenetv3_large"),
    (["--head=nope"], f"Unknown --head='nope'; choose one of {HEADS}."),
    (["--dataset=imagenet"], "Unknown dataset 'imagenet'; choose one of "
     "fashion_mnist, mnist, folder:<path>, csv:<path>."),
    (["--gpus=1", "--cpu_replicas=2"], "--gpus=1 and --cpu_replicas=2 "
     "contradict each other: pick one."),
    (["--head=arcface", "--margin=3.2"], "--head=arcface: ArcFace `margin` "
     "(3.2) is an angle in radians and must be in [0, pi); 0.5 is the "
     "paper's value."),
    (["--head=cfal", "--sigma=0"], "--head=cfal: `sigma` (0) must be in "
     "(0, inf]."),
    (["--head=cfal", "--beta=1"], "--head=cfal: `beta` (1) must be in "
     "[0, 1)."),
    (["--skip_nonfinite_steps=-1"], "--skip_nonfinite_steps (-1) must be "
     ">= 0."),
    (["--max_bad_fraction=1.5"], "--max_bad_fraction (1.5) must be in "
     "[0, 1]."),
    (["--backbone=resnet", "--backbone_args=widht=3"], "--backbone=resnet "
     "takes no widht; it takes width, depth_per_stage."),
    (["--backbone=resnet", "--backbone_args=width=0"], "--backbone=resnet: "
     "`width` (0) must be in [1, inf]."),
    (["--head=arcface", "--sigma=3"], "--head=arcface takes no sigma; it "
     "takes scale, margin, margin_counts_power, margin_floor_ratio, "
     "class_weighting, class_weights, beta, gamma, spread_weight."),
], ids=["backbone", "head", "dataset", "gpus+cpu", "margin", "sigma", "beta",
        "skip", "bad_fraction", "backbone_arg_name", "backbone_arg_value",
        "head_option"])
def test_usage_errors_exit_2_with_one_line(flags, message, capsys, tmp_path):
  code, err, _ = run_main(capsys, tmp_path / "run", *flags)
  assert (code, err) == (2, [f"train.py: {message}"])
  assert not (tmp_path / "run").exists()   # refused before writing anything


def test_labels_outside_the_classes_are_a_data_error(capsys, tmp_path):
  rng = np.random.default_rng(0)
  y_train = rng.integers(0, 10, 60)
  y_train[17] = 12
  np.savez(tmp_path / "mnist.npz",
           x_train=rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
           y_train=y_train.astype(np.uint8),
           x_test=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
           y_test=rng.integers(0, 10, 20).astype(np.uint8))
  code, err, _ = run_main(capsys, tmp_path / "run", "--dataset=mnist",
                          f"--data_dir={tmp_path}")
  assert (code, err) == (1, [
      f"train.py: {tmp_path / 'mnist.npz'}[y_train]: label 12 out of range "
      f"0..9"])


@pytest.mark.parametrize("classes, broken, message", [
    ({}, 0, "{root}: no image files (.png .jpg .jpeg .bmp .gif .tif .tiff) "
     "in any class subfolder (expected root/<class>/<image>)"),
    ({"tumour": 12}, 0, "{root}: images in only one class folder (tumour); "
     "point root at the folder whose subfolders are the classes"),
    ({"stroma": 10, "tumour": 10}, 2, "{root}: 2 of 22 image files (9.1%) "
     "are unreadable, more than --max_bad_fraction=0.01 (e.g. "
     "{root}/tumour/broken0.png: {why}); repair or remove them, or raise "
     "--max_bad_fraction."),
], ids=["no_images", "one_class", "too_many_bad"])
def test_bad_folders_are_data_errors(classes, broken, message, capsys,
                                     tmp_path):
  root = tmp_path / "tiles"
  root.mkdir()
  if not classes:
    (root / "tumour").mkdir()
    (root / "tumour" / "notes.txt").write_text("not an image")
  write_folder(root, classes, broken=broken)
  code, err, _ = run_main(capsys, tmp_path / "run", f"--dataset=folder:{root}")
  assert code == 1 and len(err) == 1, err
  expected = "train.py: " + message.format(root=root, why="")
  if broken:   # the reason comes from the decoder; check around it
    head, tail = expected.split(": )")
    assert err[0].startswith(head + ": ") and err[0].endswith(")" + tail)
  else:
    assert err[0] == expected


def test_mixed_channels_are_converted_and_said_so(capsys, tmp_path):
  root = tmp_path / "tiles"
  write_folder(root, {"stroma": 8, "tumour": 8}, modes=("L", "RGB", "L"))
  code, err, out = run_main(capsys, tmp_path / "run",
                            f"--dataset=folder:{root}", "--image_size=16",
                            "--validation_split=0.25")
  assert (code, err) == (0, [])
  assert ("note: images had different channel counts; all were converted "
          "to 1 channel(s)") in out.splitlines()


def test_a_checkpoint_of_another_model_is_refused(capsys, tmp_path):
  train(small_config(tmp_path / "run", head="cfal", train_steps=2),
        echo=lambda _: None)
  code, err, _ = run_main(capsys, tmp_path / "run", "--head=arcface",
                          "--embedding_dim=16", "--batch_size=32",
                          "--validation_split=0.01")
  assert (code, err) == (2, [
      f"train.py: {tmp_path / 'run'} holds a run with head=cfal, not "
      f"arcface: use a new --logdir or the same head."])


def test_in_memory_labels_outside_the_classes_are_refused():
  from cfal.data import DataError  # pylint: disable=import-outside-toplevel
  from cfal.data.pipeline import array_source  # pylint: disable=import-outside-toplevel
  images = np.zeros((4, 6, 6), np.uint8)
  with pytest.raises(DataError, match=r"^label 2 \(example 3\) is outside "
                     r"\[0, 2\) for 2 classes"):
    array_source(images, np.array([0, 1, 1, 2]), ("a", "b"))
  with pytest.raises(DataError, match=r"^label -1 \(example 0\)"):
    array_source(images, np.array([-1, 1, 1, 0]), ("a", "b"))
