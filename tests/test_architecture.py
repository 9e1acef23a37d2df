"""The shape of the house: imports flow one way, and nothing cycles.

Layers, lowest first (a module may import its own layer's or lower ones):

  0  cfal.options, cfal.errors          declarations, errors
  1  cfal.data, cfal.heads, cfal.backbones, cfal.metrics, cfal.viz
                                         the library: data, math, pictures
  2  cfal.report                         documents and TensorBoard files
  3  cfal.training                       build -> loop -> actions -> evaluate
  4  cfal.cli                            what the commands share
  5  cfal.commands                       the programs: flags -> config -> run
  6  train.py, eval.py, bench/, examples/, tools/
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

LAYERS = {
    "cfal.options": 0, "cfal.errors": 0,
    "cfal.data": 1, "cfal.heads": 1, "cfal.backbones": 1, "cfal.metrics": 1,
    "cfal.viz": 1,
    "cfal.report": 2,
    "cfal.training": 3,
    "cfal.cli": 4,
    "cfal.commands": 5,
}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
  """Every cfal module `path` imports at run time, at the top or inside a
  function (`if TYPE_CHECKING:` blocks are for type checkers only).

  `from cfal.heads import base` counts as importing `cfal.heads.base`:
  naming a sibling module through its package is how Python spells it.
  """
  found = set()
  tree = ast.parse(path.read_text(), filename=str(path))
  modules = {_module_name(p) for p in _library_files()}
  skipped = set()
  for node in ast.walk(tree):
    if (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"):
      skipped.update(id(n) for n in ast.walk(node))
  for node in ast.walk(tree):
    if id(node) in skipped:
      continue
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      submodules = {f"{base}.{a.name}" for a in node.names} & modules
      found.update(submodules)
      if len(submodules) < len(node.names):
        found.add(base)
  return {name for name in found if name == "cfal" or name.startswith("cfal.")}


def _library_files() -> list[pathlib.Path]:
  return sorted((ROOT / "cfal").rglob("*.py"))


def _layer(module: str) -> int | None:
  for prefix, layer in LAYERS.items():
    if module == prefix or module.startswith(prefix + "."):
      return layer
  return None


def _known(modules: set[str]) -> set[str]:
  """Keeps names that are modules of cfal (drops imported attributes)."""
  names = {_module_name(p) for p in _library_files()}
  return {m for m in modules if m in names}


def test_every_library_module_has_a_layer():
  for path in _library_files():
    name = _module_name(path)
    if name == "cfal":
      continue
    assert _layer(name) is not None, name


def test_imports_never_point_up():
  for path in _library_files():
    name = _module_name(path)
    mine = _layer(name)
    for target in _known(_imports(path)):
      theirs = _layer(target)
      if theirs is None:
        continue
      assert theirs <= mine, f"{name} (layer {mine}) imports {target} " \
                             f"(layer {theirs})"


def test_the_module_import_graph_has_no_cycles():
  graph = {_module_name(p): _known(_imports(p)) - {_module_name(p)}
           for p in _library_files()}
  # A package's __init__ importing its own submodules is how packages
  # expose names; a submodule importing its package's __init__ for a
  # sibling would be the cycle. Edges to a package mean its __init__.
  state: dict[str, int] = {}
  path: list[str] = []

  def visit(node: str) -> None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        cycle = path[path.index(nxt):] + [nxt]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if nxt not in state:
        visit(nxt)
    path.pop()
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node)


def test_the_builder_knows_nothing_downstream():
  # flags -> config -> build -> loop (steps, controller, actions) ->
  # evaluator -> report: the builder imports none of what comes after it.
  downstream = {"cfal.training.steps", "cfal.training.controller",
                "cfal.training.actions", "cfal.training.runner",
                "cfal.training.evaluator", "cfal.training.evaluate",
                "cfal.report"}
  path = ROOT / "cfal" / "training" / "build.py"
  for target in _imports(path):
    assert not any(target == d or target.startswith(d + ".")
                   for d in downstream), target


def test_only_the_commands_define_flags():
  # Flags stay at the edge: cfal.commands holds the programs, and nothing
  # in the library imports it (the layer rule) or reads flags itself.
  commands = ROOT / "cfal" / "commands"
  for path in _library_files():
    if commands in path.parents:
      continue
    assert not _imports_absl_flags(path), path


def _imports_absl_flags(path: pathlib.Path) -> bool:
  """Whether `path` imports absl's flags module, however it is spelled
  (`from absl import app, flags`, `import absl.flags`, ...)."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      if any(a.name == "absl.flags" or a.name.startswith("absl.flags.")
             for a in node.names):
        return True
    elif isinstance(node, ast.ImportFrom):
      module = node.module or ""
      if module == "absl.flags" or module.startswith("absl.flags."):
        return True
      if module == "absl" and any(a.name == "flags" for a in node.names):
        return True
  return False


def test_the_flags_check_sees_every_spelling(tmp_path):
  for text in ("from absl import app, flags\n", "import absl.flags\n",
               "from absl.flags import FLAGS\n"):
    (tmp_path / "m.py").write_text(text)
    assert _imports_absl_flags(tmp_path / "m.py"), text
  (tmp_path / "m.py").write_text("from absl import app, logging\n")
  assert not _imports_absl_flags(tmp_path / "m.py")
  assert _imports_absl_flags(ROOT / "cfal" / "commands" / "train.py")


def test_importing_the_library_does_not_define_flags():
  import subprocess, sys  # pylint: disable=import-outside-toplevel,multiple-imports
  code = ("import cfal, cfal.heads, cfal.backbones, cfal.training.runner, "
          "cfal.training.evaluate, cfal.cli\n"
          "from absl import flags\n"
          "names = [n for n in flags.FLAGS if n in ('head', 'logdir')]\n"
          "print(names)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout.strip()
  assert out == "[]"


def test_the_top_level_scripts_are_thin():
  for script, module in (("train.py", "cfal.commands.train"),
                         ("eval.py", "cfal.commands.eval")):
    tree = ast.parse((ROOT / script).read_text())
    imported = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)}
    assert imported == {module}, (script, imported)
    assert "DEFINE" not in (ROOT / script).read_text()


def test_bench_and_the_library_never_import_tests():
  for folder in ("bench", "cfal", "tools", "examples"):
    for path in (ROOT / folder).rglob("*.py"):
      tree = ast.parse(path.read_text())
      for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom)
                 else [])
        for name in names:
          assert not name.startswith(("tests", "support", "conftest")), (
              path, name)


def test_the_scripts_build_through_the_one_builder():
  # No second copy of the build sequence: nothing outside build.py makes a
  # backbone, a head or an optimizer for a run.
  builders = ("build_backbone(", "build_head(", "build_optimizer(",
              "keras.optimizers.Adam(")
  allowed = {ROOT / "cfal" / "training" / "build.py"}
  for folder in ("cfal/training", "cfal/report"):
    for path in (ROOT / folder).rglob("*.py"):
      if path in allowed:
        continue
      text = path.read_text()
      for call in builders:
        assert call not in text, (path, call)
  for path in (ROOT / "cfal" / "commands").rglob("*.py"):
    text = path.read_text()
    for call in builders:
      assert call not in text, (path, call)
