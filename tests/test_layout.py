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
    code = (
        "import platform; platform.system(); import dncml.trainers, dncml.platform, dncml.experiments, "
        "dncml.analysis; import torch; print(platform.__file__)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(ROOT / "platform") not in result.stdout


def test_code_folders_are_namespace_portions():
    for folder in CODE_FOLDERS:
        assert not (ROOT / folder / "__init__.py").exists(), folder


def _imports(folder: str, exclude: tuple[str, ...] = ()) -> set[str]:
    """Every absolute module imported anywhere in a folder (relative imports stay inside it)."""
    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        if path.name in exclude:
            continue
        for line in path.read_text().splitlines():
            match = re.match(r"\s*(?:from|import)\s+([\w.]+)", line)
            if match:
                found.add(match.group(1))
    return found


def _top(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def _ours(modules: set[str]) -> set[str]:
    return {".".join(m.split(".")[:2]) for m in modules if m.startswith("dncml.")}


def test_dependency_direction():
    """ARCHITECTURE.md: analysis -> the store only; platform -> trainers, experiments, and of
    analysis only the store's format and its reader (`dncml.analysis.schema`, `dncml.analysis.rows`,
    which the writer shares with the readers), the CLI (table / plot / status commands) all of analysis; experiments ->
    trainers; trainers -> torch, faiss, pytorch-metric-learning, never Ray; analysis/schema.py ->
    the standard library only."""
    trainers = _imports("trainers")
    assert "ray" not in _top(trainers)
    assert _ours(trainers) <= {"dncml.trainers"}
    analysis = _imports("analysis")
    assert not _top(analysis) & {"ray", "torch", "faiss"}
    assert _ours(analysis) <= {"dncml.analysis"}
    experiments = _imports("experiments")
    assert not _top(experiments) & {"ray", "torch", "faiss"}
    assert _ours(experiments) <= {"dncml.experiments", "dncml.trainers"}
    platform = _imports("platform", exclude=("cli.py",))
    assert _ours(platform) <= {"dncml.platform", "dncml.trainers", "dncml.experiments", "dncml.analysis"}
    from_analysis = {m for m in platform if m == "dncml.analysis" or m.startswith("dncml.analysis.")}
    assert from_analysis == {"dncml.analysis.schema", "dncml.analysis.rows"}, (
        from_analysis
    )  # the writer writes and reads through the shared format
    assert _ours(_imports("platform")) <= {"dncml.platform", "dncml.trainers", "dncml.experiments", "dncml.analysis"}


def _file_imports(path: Path) -> set[str]:
    """Every module a file imports, relative ones included (as `.name`)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def test_the_store_format_module_imports_only_the_standard_library():
    """analysis/schema.py is shared by the writer (platform) and the readers (analysis): it may
    cost neither side a dependency (no pandas, pyarrow, torch, Ray; nothing of dncml)."""
    imported = _file_imports(ROOT / "analysis" / "schema.py")
    assert imported, "no imports found: the parser missed them"
    outside = {m for m in imported if m.startswith(".") or m.split(".")[0] not in sys.stdlib_module_names | {"__future__"}}
    assert not outside, outside


def test_one_style_ruff_clean():
    """ruff (configured in pyproject.toml) lints and formats the whole tree cleanly."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    for command in ([ruff, "check", "."], [ruff, "format", "--check", "."]):
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_the_trainers_metric_keys_and_the_stores_columns_agree():
    """The layering forbids trainers/ and analysis/ to import each other, so the keys the trainer
    reports (`metric_keys`) and the columns the store's format names them by (`schema`) are the one
    contract spelled on both sides of the seam: this pins them together."""
    from dncml.analysis import schema
    from dncml.trainers import metric_keys

    for metric in ("val_recall@1", "test_map@r", "test_small_nmi"):
        assert metric_keys.selected_key(metric) == schema.selected_column(metric)
        assert metric_keys.best_key(metric) == schema.best_column(metric)
    source = (ROOT / "trainers" / "divide_and_conquer.py").read_text()
    assert f'"{schema.BEST_EPOCH}"' in source  # the trainer reports the selection under the store's column name
