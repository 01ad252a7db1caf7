"""The package layout: the folder `platform/` never shadows the standard library's `platform`,
and the dependency direction of ARCHITECTURE.md holds."""
from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("trainers", "platform", "experiments", "analysis")


def test_platform_is_the_standard_library_under_pytest():
    import platform

    assert Path(platform.__file__).resolve().parent == Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert platform.system()


def test_imports_from_the_repository_root():
    code = ("import platform; platform.system(); import dncml.trainers, dncml.platform, dncml.experiments, "
            "dncml.analysis; import torch; print(platform.__file__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(ROOT / "platform") not in result.stdout


def test_code_folders_are_namespace_portions():
    for folder in CODE_FOLDERS:
        assert not (ROOT / folder / "__init__.py").exists(), folder


def _imports(folder: str) -> set[str]:
    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        for line in path.read_text().splitlines():
            match = re.match(r"\s*(?:from|import)\s+([\w.]+)", line)
            if match:
                found.add(match.group(1))
    return found


def test_dependency_direction():
    trainers = _imports("trainers")
    assert not any(m == "ray" or m.startswith("ray.") for m in trainers)
    assert not any(m.startswith("dncml.platform") or m.startswith("dncml.analysis") for m in trainers)
    analysis = _imports("analysis")
    assert not any(m.split(".")[0] in ("ray", "torch") for m in analysis)
    assert not any(m.startswith("dncml.") and not m.startswith("dncml.analysis") for m in analysis)
