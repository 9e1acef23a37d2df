"""cfal.report.documents.write_outputs: the files of an evaluation."""

from __future__ import annotations

import io
import json
import types

import numpy as np
import pytest
from PIL import Image

from cfal.metrics import classification_report
from cfal.report import documents

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-", "svg": b"<?xml"}
PICTURES = ("confusion_matrix", "embeddings")


@pytest.fixture(scope="module")
def evaluated():
  """A report and result as `evaluate_run` makes them, from made-up
  embeddings of 4 classes in 8-D with prototypes at 0.4x the class means."""
  rng = np.random.default_rng(0)
  means = rng.normal(size=(4, 8))
  means *= 10 / np.linalg.norm(means, axis=1, keepdims=True)
  labels = np.arange(400) % 4
  embeddings = (means[labels] + rng.normal(size=(400, 8))).astype(np.float32)
  scores = -np.linalg.norm(embeddings[:, None] - 0.4 * means[None], axis=-1)
  predictions = scores.argmax(1)
  confusion = np.zeros((4, 4), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  names = ["ant", "bee", "cat", "dog"]
  result = types.SimpleNamespace(
      confusion=confusion, loss=0.5, embeddings=embeddings, labels=labels,
      predictions=predictions, scores=scores.astype(np.float32),
      report={**classification_report(confusion, names), "loss": 0.5})
  run = types.SimpleNamespace(
      model=types.SimpleNamespace(head="cfal", backbone="small_cnn",
                                  embedding_dim=8),
      data=types.SimpleNamespace(name="made_up"))
  report = documents.evaluation_report(
      result, run=run, logdir="/runs/x", split="test", origin="checkpoint",
      metric="euclidean", step=100)
  return report, result, (0.4 * means).astype(np.float32)


def _pixels(png: bytes) -> tuple[int, int]:
  assert png.startswith(MAGIC["png"])
  return Image.open(io.BytesIO(png)).size


def _scaled(small: tuple[int, int], large: tuple[int, int],
            factor: int) -> bool:
  """`large` is `small` times `factor`, give or take a rounded pixel."""
  return all(abs(b - factor * a) <= factor for a, b in zip(small, large))


def test_default_writes_pngs_and_returns_their_bytes(evaluated, tmp_path):
  report, result, prototypes = evaluated
  pngs = documents.write_outputs(tmp_path, report, result, prototypes)
  assert list(pngs) == list(PICTURES)
  for name in PICTURES:
    assert (tmp_path / f"{name}.png").read_bytes() == pngs[name]
    assert not (tmp_path / f"{name}.pdf").exists()
    assert not (tmp_path / f"{name}.svg").exists()
  assert json.loads((tmp_path / "report.json").read_text())["head"] == "cfal"


def test_each_format_once_per_picture(evaluated, tmp_path):
  report, result, prototypes = evaluated
  pngs = documents.write_outputs(tmp_path, report, result, prototypes,
                                 formats=("pdf", "png", "svg"))
  for name in PICTURES:
    for fmt, magic in MAGIC.items():
      assert (tmp_path / f"{name}.{fmt}").read_bytes().startswith(magic)
    assert (tmp_path / f"{name}.png").read_bytes() == pngs[name]


def test_png_for_tensorboard_without_png_files(evaluated, tmp_path):
  report, result, prototypes = evaluated
  pngs = documents.write_outputs(tmp_path, report, result, prototypes,
                                 formats=("svg",), dpi=50)
  assert sorted(p.name for p in tmp_path.glob("*.*") if p.suffix in
                (".png", ".pdf", ".svg")) == ["confusion_matrix.svg",
                                              "embeddings.svg"]
  default = documents.write_outputs(tmp_path / "b", report, result,
                                    prototypes)
  # TensorBoard's copy stays at the default resolution whatever --dpi
  # says (a print dpi would put huge images into the event files).
  for name in PICTURES:
    assert _pixels(pngs[name]) == _pixels(default[name])


def test_dpi_sets_the_png_files_pixel_size(evaluated, tmp_path):
  report, result, prototypes = evaluated
  documents.write_outputs(tmp_path / "a", report, result, prototypes, dpi=50)
  documents.write_outputs(tmp_path / "b", report, result, prototypes,
                          dpi=150)
  for name in PICTURES:
    small = _pixels((tmp_path / "a" / f"{name}.png").read_bytes())
    large = _pixels((tmp_path / "b" / f"{name}.png").read_bytes())
    assert small[0] > 300 and _scaled(small, large, 3)


def test_bad_format_is_one_line_and_writes_nothing(evaluated, tmp_path):
  report, result, prototypes = evaluated
  with pytest.raises(ValueError) as error:
    documents.write_outputs(tmp_path / "out", report, result, prototypes,
                            formats=("png", "tiff"))
  message = str(error.value)
  assert "\n" not in message
  assert "'tiff'" in message and "png, pdf, svg" in message
  assert not (tmp_path / "out").exists()
