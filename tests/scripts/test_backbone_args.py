"""--backbone_args: a backbone's own options from the command line."""

from __future__ import annotations

from cfal.training import build
from support.training import train_script

TRAIN = train_script()


def test_backbone_options_reach_the_backbone(tmp_path):
  try:
    TRAIN.FLAGS(["train.py", f"--logdir={tmp_path}", "--backbone=resnet",
                 "--backbone_args=width=8,depth_per_stage=1;1",
                 "--embedding_dim=8", "--head=softmax"])
    TRAIN.check_flags()
    config = TRAIN.config_from_flags()
  finally:
    TRAIN.FLAGS.unparse_flags()
  assert config.model.backbone_args == {"width": 8, "depth_per_stage": [1, 1]}
  built = build.build(config, training=False)
  widths = {layer.filters for layer in built.backbone.layers
            if hasattr(layer, "filters")}
  assert min(widths) == 8 and max(widths) == 16   # two stages: 8, then 16
