"""The layers of DESIGN.md, enforced: pure modules import with torch and Ray made unimportable."""

import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "taskonomy_ray"
# Pure layers: no torch, no Ray. `data` layer modules may use torch but never Ray.
PURE = ["tasks", "errors", "layout", "point_info", "splits", "samples", "tables", "digests",
        "affinity", "taxonomy", "solvers", "solve_text", "evaluate", "published", "beam", "plots",
        "report", "report_flags", "config", "sweep.config", "sweep.lease", "sweep.guard",
        "sweep.partial", "sweep.superseded", "sweep.sections"]
NO_RAY = ["dataset", "derived", "config", "models", "training", "replicas", "features",
          "transfer", "labels", "grouped", "fused", "memory", "render"]

BLOCKER = """
import sys
class Block:
    def __init__(self, names): self.names = names
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in self.names:
            raise ImportError(name + ' is blocked in this layer test')
sys.meta_path.insert(0, Block(BLOCKED))
import importlib
importlib.import_module(MODULE)
"""


def _import_with_blocked(module: str, blocked: set[str]) -> subprocess.CompletedProcess:
    code = f"BLOCKED = {sorted(blocked)!r}\nMODULE = 'taskonomy_ray.{module}'\n" + BLOCKER
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_without_torch_or_ray(module):
    r = _import_with_blocked(module, {"torch", "ray"})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("module", NO_RAY)
def test_training_and_data_layers_import_without_ray(module):
    r = _import_with_blocked(module, {"ray"})
    assert r.returncode == 0, r.stderr


def test_cli_starts_without_torch_or_ray():
    r = _import_with_blocked("cli", {"torch", "ray"})
    assert r.returncode == 0, r.stderr
