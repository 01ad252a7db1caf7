"""Experiment specs: declarative sweeps (the paper's ablations and searches) and their loader.

An experiment YAML names a base run, the axes to vary and/or an Optuna search space, the metric
to select on, resources, and presets (`smoke` for tests, `quick` for a CPU laptop, `paper` for
GPUs and the real datasets). Loading resolves a preset and validates every grid point as a
RunSpec, so a bad value fails here, before any cluster time is spent.

    name: table6_grouping
    base: runs/glyphs_quick.yaml        # relative to this folder; or `run:` alone
    run: {num_learners: 8}              # overrides on the base
    grid: {grouping: [none, kmeans], seed: [0, 1, 2]}
    search: {lr: {loguniform: [1.0e-4, 1.0e-2]}}   # Optuna (not together with grid)
    rows: grouping                      # the setting a table row stands for
    metric: val_recall@1
    mode: max
    presets: {smoke: {run: {...}, grid: {...}}, quick: {...}, paper: {...}}
"""
from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dncml.trainers import spec as runspec

HERE = Path(__file__).resolve().parent
PRESETS = ("smoke", "quick", "paper")
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint", "quniform")
TOP_KEYS = {"name", "description", "base", "run", "grid", "search", "rows", "metric", "mode", "num_samples",
            "resources", "max_concurrent", "asha", "table", "plot", "presets", "default_preset"}
PRESET_KEYS = {"base", "run", "grid", "search", "num_samples", "resources", "max_concurrent", "asha", "description"}
RESOURCE_KEYS = {"num_workers": 1, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0, "use_gpu": False, "actor_gpus": 0.0}


class ExperimentError(ValueError):
    """An invalid experiment spec; the message names the file, the key and what it allows."""


@dataclass
class Experiment:
    name: str
    path: Path
    preset: str
    description: str
    run: dict[str, Any]  # the base RunSpec fields after the preset
    grid: dict[str, list]  # axis -> values (RunSpec field names)
    search: dict[str, dict]  # field -> {distribution: args}
    rows: list[str]
    metric: str
    mode: str
    num_samples: int
    resources: dict[str, Any]
    max_concurrent: int | None
    asha: dict | None
    table: dict = field(default_factory=dict)
    plot: dict = field(default_factory=dict)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid axes (one dict of RunSpec overrides each; a linked
        axis contributes all of its fields)."""
        if not self.grid:
            return [{}]
        axes = list(self.grid)
        return [self.overrides(dict(zip(axes, values))) for values in itertools.product(*(self.grid[a] for a in axes))]

    @staticmethod
    def overrides(config: dict[str, Any]) -> dict[str, Any]:
        """A trial's configuration as RunSpec overrides: linked axes (a mapping of fields that
        vary together, e.g. `method: {grouping: none, num_learners: 1}`) are flattened."""
        flat: dict[str, Any] = {}
        for key, value in config.items():
            flat.update(value if isinstance(value, dict) else {key: value})
        return flat

    def run_spec(self, overrides: dict[str, Any] | None = None) -> runspec.RunSpec:
        return runspec.from_dict(self.run, self.overrides(overrides or {}))

    def setting_label(self, config: dict[str, Any]) -> str:
        """The table row a trial belongs to, e.g. 'grouping=kmeans' (seed is not a row)."""
        config = self.overrides(config)
        return ",".join(f"{r}={config.get(r, self.run.get(r))}" for r in self.rows)

    @property
    def trial_count(self) -> int:
        return len(self.grid_points()) * self.num_samples


def experiment_path(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = HERE / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in HERE.glob("*.yaml")))
    raise ExperimentError(f"unknown experiment {str(name_or_path)!r}: no such file, and not one of: {known}")


def list_experiments() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def load_experiment(name_or_path: str | os.PathLike, preset: str | None = None) -> Experiment:
    path = experiment_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ExperimentError(f"{path}: not valid YAML: {error}") from None
    try:
        return _resolve(raw, path, preset)
    except runspec.SpecError as error:
        raise ExperimentError(f"{path}: {error}") from None


def _resolve(raw: dict, path: Path, preset: str | None) -> Experiment:
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: an experiment is a mapping of keys, got {type(raw).__name__}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ExperimentError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_KEYS))}")
    presets = raw.get("presets") or {}
    preset = preset or raw.get("default_preset") or ("quick" if "quick" in presets else None)
    if preset is not None and preset not in presets:
        allowed = ", ".join(presets) or "none defined"
        raise ExperimentError(f"{path}: unknown preset {preset!r}; this experiment has: {allowed}")
    layer = presets.get(preset, {}) if preset else {}
    unknown = set(layer) - PRESET_KEYS
    if unknown:
        raise ExperimentError(f"{path}: preset {preset!r}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(PRESET_KEYS))}")

    base = layer.get("base", raw.get("base"))
    run: dict[str, Any] = {}
    if base:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            raise ExperimentError(f"{path}: base run {base!r} not found at {base_path}")
        run.update(_canonical(yaml.safe_load(base_path.read_text()) or {}, f"{base_path}"))
    run.update(_canonical(raw.get("run") or {}, "run"))
    run.update(_canonical(layer.get("run") or {}, f"presets.{preset}.run"))
    run.setdefault("name", raw.get("name", path.stem))

    grid = {}
    for key, values in {**(raw.get("grid") or {}), **(layer.get("grid") or {})}.items():
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if values and all(isinstance(v, dict) for v in values):  # a linked axis: fields that vary together
            grid[str(key)] = [_canonical(v, f"grid.{key}") for v in values]
        else:
            grid[runspec.canonical_field(key)] = values
    search = {runspec.canonical_field(k): v for k, v in ({**(raw.get("search") or {}), **(layer.get("search") or {})}).items()}
    for axis, values in grid.items():
        if not values:
            raise ExperimentError(f"{path}: grid axis {axis!r} has no values")
    linked = {a: list(dict.fromkeys(f for point in v for f in point)) for a, v in grid.items() if isinstance(v[0], dict)}
    rows = raw.get("rows") or [f for a in grid if a != "seed" for f in linked.get(a, [a])]
    rows = [runspec.canonical_field(r) for r in ([rows] if isinstance(rows, str) else rows)]
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise ExperimentError(f"{path}: mode {mode!r}: allowed values are max, min")
    metric = raw.get("metric", "val_recall@1")
    if not str(metric).startswith("val_"):
        raise ExperimentError(f"{path}: metric {metric!r}: select on a validation metric (val_...), never on test")
    num_samples = int(layer.get("num_samples", raw.get("num_samples", 1)))
    if num_samples < 1:
        raise ExperimentError(f"{path}: num_samples must be >= 1")
    resources = {**RESOURCE_KEYS, **(raw.get("resources") or {}), **(layer.get("resources") or {})}
    unknown = set(resources) - set(RESOURCE_KEYS)
    if unknown:
        raise ExperimentError(f"{path}: resources: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(RESOURCE_KEYS)}")
    if int(resources["num_workers"]) < 1:
        raise ExperimentError(f"{path}: resources.num_workers must be >= 1")
    asha = layer.get("asha", raw.get("asha"))
    experiment = Experiment(
        name=str(raw.get("name", path.stem)), path=path, preset=preset or "", description=str(layer.get("description", raw.get("description", ""))),
        run=run, grid=grid, search=search, rows=rows, metric=str(metric), mode=mode, num_samples=num_samples,
        resources=resources, max_concurrent=layer.get("max_concurrent", raw.get("max_concurrent")), asha=asha,
        table=copy.deepcopy(raw.get("table") or {}), plot=copy.deepcopy(raw.get("plot") or {}),
    )
    validate(experiment)
    return experiment


def _canonical(values: dict, where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ExperimentError(f"{where}: expected a mapping of RunSpec fields")
    if "run" in values and isinstance(values["run"], dict):
        values = values["run"]
    return {runspec.canonical_field(str(k)): v for k, v in values.items()}


def validate(experiment: Experiment) -> None:
    """Every grid point, and the corners of the search space, must make a valid RunSpec."""
    for point in experiment.grid_points():
        try:
            experiment.run_spec(point)
        except runspec.SpecError as error:
            where = ", ".join(f"{k}={v}" for k, v in point.items()) or "the base run"
            raise ExperimentError(f"{experiment.path}: grid point {where}: {error}") from None
    for name, distribution in experiment.search.items():
        if not isinstance(distribution, dict) or len(distribution) != 1 or next(iter(distribution)) not in DISTRIBUTIONS:
            raise ExperimentError(
                f"{experiment.path}: search.{name}: write one of {', '.join(DISTRIBUTIONS)}, e.g. {{loguniform: [1e-4, 1e-2]}}")
        kind, args = next(iter(distribution.items()))
        values = list(args) if kind == "choice" else list(args)[:2]
        if kind != "choice" and (len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] >= values[1]):
            raise ExperimentError(f"{experiment.path}: search.{name}: {kind} needs [low, high] with low < high")
        if kind == "loguniform" and values[0] <= 0:
            raise ExperimentError(f"{experiment.path}: search.{name}: loguniform needs low > 0")
        for value in values:
            try:
                runspec.coerce(name, value if kind != "randint" else int(value))
            except runspec.SpecError as error:
                raise ExperimentError(f"{experiment.path}: search.{name}: {error}") from None
    if experiment.search and experiment.grid:
        raise ExperimentError(f"{experiment.path}: a spec has either grid axes (Tune's grid) or a search space "
                              f"(Optuna), not both: Tune's grid_search cannot be combined with OptunaSearch")


def sample_is_valid(experiment: Experiment, config: dict[str, Any]) -> str | None:
    """None if a sampled configuration makes a valid RunSpec, else the reason."""
    try:
        experiment.run_spec(config)
        return None
    except runspec.SpecError as error:
        return str(error)
