"""RESULTS.md's long-tail section: means, spreads, the paired comparison and
the tuning table computed from kept results (generated here)."""

from __future__ import annotations

import json

import numpy as np

from studies import experiments, tables

SEEDS = (0, 1, 2)


def _report(rng, few: float) -> dict:
  groups = {"many": rng.uniform(0.8, 0.95), "medium": rng.uniform(0.6, 0.8),
            "few": few}
  tops = ("T-shirt/top", "Pullover", "Coat", "Shirt")
  return {"balanced_accuracy": rng.uniform(0.7, 0.9),
          "macro_f1": rng.uniform(0.7, 0.9),
          "embedding": {"map_at_r": rng.uniform(0.5, 0.8)},
          "per_class": {n: {"recall": rng.uniform(0.3, 1.0)} for n in tops},
          "long_tail": {"rule": "thirds of the classes by training count",
                        "class_counts": dict(zip(tops, (5400, 1941, 697,
                                                        251))),
                        "groups": {g: {"recall": v}
                                   for g, v in groups.items()}}}


def _keep(folder, name, record, **reports):
  folder.mkdir(parents=True)
  (folder / "result.json").write_text(json.dumps(record))
  for evaluation, report in reports.items():
    (folder / f"{evaluation}.json").write_text(json.dumps(report))


def test_long_tail_section_from_kept_results(tmp_path, monkeypatch):
  module = experiments.module("long_tail")
  experiment = module.EXPERIMENT
  rng = np.random.default_rng(7)
  # Few-shot recall per head and seed: CFAL, and two baselines of which
  # logit adjustment is the better one.
  few = {"cfal": [0.70, 0.64, 0.75], "logit_adjusted": [0.66, 0.68, 0.69],
         "softmax": [0.30, 0.35, 0.28]}
  results = tmp_path / "results"
  for head, values in few.items():
    for seed, value in zip(SEEDS, values):
      reports = {"test": _report(rng, value)}
      if head == "softmax":
        reports["test_posthoc_la"] = _report(rng, value + 0.2)
      _keep(results / "long_tail" / f"r100_{head}" / f"seed-{seed}", head,
            {"train_seconds": 60.0 + seed, "eval_seconds": {"test": 5.0}},
            **reports)
  for tau, score in ((0.5, 0.81), (1.0, 0.84), (1.5, 0.83)):
    _keep(results / "long_tail" / "r100_logit_adjusted" / "tune" /
          f"tau={tau}" / "seed-0", "t",
          {"train_seconds": 1.0, "eval_seconds": {}},
          validation={"balanced_accuracy": score})
  monkeypatch.setattr(tables, "DOCS", tmp_path / "docs")

  runs = tables.load(experiment, results=results)
  assert set(runs) == {"r100_cfal", "r100_logit_adjusted", "r100_softmax"}
  text = module.section(runs, experiment)

  cfal_row = next(l for l in text.splitlines() if l.startswith("| CFAL |"))
  expected = (f"{np.mean(few['cfal']):.3f} ± "
              f"{np.std(few['cfal'], ddof=1):.3f}")
  assert expected in cfal_row and "| 3 |" in cfal_row
  assert "| softmax + post-hoc LA |" in text
  # The paired comparison: CFAL minus the best baseline, seed by seed.
  diffs = np.subtract(few["cfal"], few["logit_adjusted"])
  line = next(l for l in text.splitlines()
              if l.startswith("- Ratio 100, few-shot recall"))
  assert "for logit-adjusted loss, the best of 3 baselines" in line
  assert f"difference {diffs.mean():+.3f}, 95% interval [" in line
  assert "| head | T-shirt/top (5,400) | Pullover (1,941) |" in text
  shirt = [json.loads((results / "long_tail" / "r100_cfal" / f"seed-{s}" /
                       "test.json").read_text())["per_class"]["Shirt"]
           ["recall"] for s in SEEDS]
  assert f"{np.mean(shirt):.3f} ± {np.std(shirt, ddof=1):.3f}" in next(
      l for l in text.splitlines() if l.startswith("| CFAL |")
      and "±" in l and l != cfal_row)
  # The conclusion answers in words, with the numbers.
  lines = module.conclusion(runs, experiment)
  few_line = lines[0]
  assert lines[2].startswith("  (Compared at ratio 100: softmax, softmax + "
                             "post-hoc LA, logit-adjusted loss; not run yet:")
  assert lines[3] == ("- Ratio 10: CFAL and a baseline with its seeds have "
                      "not both run yet.")
  assert few_line.startswith("- Ratio 100, few-shot recall: **not "
                             "established**.")
  assert f"difference {diffs.mean():+.3f}, 95% interval [" in few_line
  assert "(CFAL higher on 2)" in few_line
  assert "**tau=1.0: 0.840**" in text and "tau=0.5: 0.810" in text
  assert "Ratio 10: not run yet." in text
  assert (tmp_path / "docs" / "long_tail_r100.png").read_bytes()[:4] == (
      b"\x89PNG")


def _cell(values):
  return {"seeds": [0, 1, 2], "values": {"few": values}}


def test_verdict_follows_the_paired_t_interval():
  best = _cell([0.5, 0.6, 0.7])
  other = _cell([0.1, 0.2, 0.3])
  # CFAL 0.1 above the best on every seed, differences 0.09, 0.10, 0.11.
  yes = tables.verdict({"CFAL": _cell([0.59, 0.70, 0.81]), "a": best,
                        "b": other}, "Here")
  diffs = np.array([0.09, 0.10, 0.11])
  half = 4.302653 * diffs.std(ddof=1) / np.sqrt(3)   # t(0.975, 2 df)
  assert yes.startswith("Here, few-shot recall: **yes**. CFAL 0.700 ± "
                        "0.110 against 0.600 ± 0.100 for a, the best of 2 "
                        "baselines by its mean; next best b 0.200.")
  assert (f"Paired difference +0.100, 95% interval [{0.1 - half:+.3f}, "
          f"{0.1 + half:+.3f}] over 3 seeds (CFAL higher on 3).") in yes
  no = tables.verdict({"CFAL": _cell([0.41, 0.5, 0.59]), "a": best}, "Here")
  assert "**no, it is lower**" in no
  # Higher on every seed, but too spread to say.
  unsure = tables.verdict({"CFAL": _cell([0.51, 0.61, 1.0]), "a": best},
                          "Here")
  assert "**not established**" in unsure and "(CFAL higher on 3)" in unsure
  assert tables.verdict({"a": best}, "Here") is None
  assert tables.verdict({"CFAL": best}, "Here") is None


def test_results_page_of_an_empty_results_folder(tmp_path, monkeypatch):
  from studies import results  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(tables, "DOCS", tables.DOCS)   # restored afterwards
  page = tmp_path / "out" / "R.md"
  assert results.main(["--results_dir", str(tmp_path / "none"),
                       "--output", str(page)]) == 0
  text = page.read_text()
  for name in experiments.names():
    assert f"Not run yet: `.venv/bin/python studies/run.py {name}`." in text
  assert "## Conclusion" not in text
  assert (f"The study so far (not finished: {', '.join(experiments.names())})"
          f" took 0.0 hours") in text
  assert tables.DOCS == page.parent / "docs"


def test_cfal_diagnosis_conclusion_pairs_each_change_with_before(
    tmp_path):
  module = experiments.module("cfal_diagnosis")
  experiment = module.EXPERIMENT
  accuracy = {"before": [0.84, 0.85, 0.86], "sigma_30": [0.86, 0.86, 0.88]}
  way = {"before": [0.45, 0.46, 0.44], "sigma_30": [0.8, 0.82, 0.81]}
  results = tmp_path / "results"
  for name in accuracy:
    for seed in SEEDS:
      _keep(results / "cfal_diagnosis" / name / f"seed-{seed}", name,
            {"train_seconds": 60.0, "eval_seconds": {}, "flags": {}},
            test={"balanced_accuracy": accuracy[name][seed],
                  "prototypes": {"fraction_to_mean_median": way[name][seed]}})
  runs = tables.load(experiment, results=results)
  lines = module.conclusion(runs, experiment)
  assert lines[0].startswith("- CFAL's diagnosis: with cfal's defaults "
                             "before this study (sigma 130, margin 0.75) "
                             "its prototypes end 0.45 ± 0.01 of the way")
  diffs = np.subtract(accuracy["sigma_30"], accuracy["before"])
  low, high = tables.paired_interval(diffs)
  assert lines[1] == (f"  - sigma_30: prototypes 0.81 ± 0.01 of the way; "
                      f"balanced accuracy {diffs.mean():+.3f} against "
                      f"`before` over 3 paired seed(s), 95% interval "
                      f"[{low:+.3f}, {high:+.3f}].")
  assert lines[2] == ("  - cfal's CFAL defaults are now `before` with "
                      "sigma=30 (the `sigma_30` row).")
  assert len(lines) == 3


def test_cfal_defaults_are_the_diagnosis_chosen_row():
  import inspect  # pylint: disable=import-outside-toplevel
  from cfal import heads  # pylint: disable=import-outside-toplevel
  module = experiments.module("cfal_diagnosis")
  chosen = {**module.BEFORE, **module.CHANGES[module.CHOSEN]}
  chosen.pop("head")
  parameters = inspect.signature(heads.CFAL).parameters
  assert {k: parameters[k].default for k in chosen} == chosen


def test_transfer_conclusion_compares_the_fine_tuned_heads(tmp_path):
  module = experiments.module("transfer")
  experiment = module.EXPERIMENT
  rng = np.random.default_rng(3)
  few = {"pretrained_cfal": [0.90, 0.91, 0.92],
         "pretrained_logit_adjusted": [0.95, 0.96, 0.95],
         "scratch_logit_adjusted": [0.99, 0.99, 0.99]}   # not compared
  results = tmp_path / "results"
  for name, values in few.items():
    for seed, value in zip(SEEDS, values):
      _keep(results / "transfer" / name / f"seed-{seed}", name,
            {"train_seconds": 60.0, "eval_seconds": {"test": 5.0}},
            test=_report(rng, value))
  runs = tables.load(experiment, results=results)
  lines = module.conclusion(runs, experiment)
  assert len(lines) == 2
  assert lines[0].startswith("- Fine-tuned from the pre-trained backbone "
                             "(experiment 4, recipes' hyper-parameters), "
                             "few-shot recall: **no, it is lower**.")
  assert "for logit-adjusted loss, the best of 1 baselines" in lines[0]
  diffs = np.subtract(few["pretrained_cfal"],
                      few["pretrained_logit_adjusted"])
  assert f"difference {diffs.mean():+.3f}, 95% interval [" in lines[0]
