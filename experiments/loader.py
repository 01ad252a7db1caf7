"""Experiment specs: declarative sweeps (the paper's ablations and searches) and their loader.

An experiment YAML names a base run, the axes to vary and/or an Optuna search space, the metric
to select on, resources, and presets (`smoke` for tests, `quick` for a CPU laptop, `paper` for
GPUs and the real datasets). Loading resolves a preset and validates everything a sweep would
trip over later (every grid point and the corners of the search space as RunSpecs, the metric,
ASHA, resources, rows and the table's baseline), so a mistake fails here, before any cluster
time is spent.

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
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dncml.trainers import metric_keys
from dncml.trainers import spec as runspec

HERE = Path(__file__).resolve().parent
PRESETS = ("smoke", "quick", "paper")
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint", "quniform")
TOP_KEYS = {
    "name",
    "description",
    "base",
    "run",
    "grid",
    "search",
    "rows",
    "metric",
    "mode",
    "num_samples",
    "resources",
    "max_concurrent",
    "asha",
    "table",
    "plot",
    "presets",
    "default_preset",
}
PRESET_KEYS = {"base", "run", "grid", "search", "num_samples", "resources", "max_concurrent", "asha", "description"}
RESOURCE_KEYS = {"num_workers": 1, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0, "use_gpu": False, "actor_gpus": 0.0}
ASHA_KEYS = {"grace_period": 2, "reduction_factor": 2}  # the defaults platform/sweep.py applies
# An experiment's name is a folder of the results store, a run's name a folder of runs/.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
NAME_RULE = (
    f"it names a folder, so it must match {NAME_PATTERN.pattern} and hold no '..' (letters, digits, "
    "'.', '_', '-'; no slashes, no leading dot, at most 100 characters)"
)


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
        return _grid_points(self.grid)

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

    def card(self, sweep: str) -> dict[str, Any]:
        """What `analysis/` needs to know about a sweep of this experiment (rows, metric, the
        table's labels and the paper's numbers), stored beside its Parquet tables
        (`experiment.json`) so that analysis reads the store alone."""
        return {
            "experiment": self.name,
            "preset": self.preset,
            "sweep": sweep,
            "description": self.description,
            "rows": self.rows,
            "metric": self.metric,
            "mode": self.mode,
            "grid": self.grid,
            "search": self.search,
            "num_samples": self.num_samples,
            "table": self.table,
            "plot": self.plot,
            "recipe": self.run.get("recipe", "paper"),
            "base_run": self.run,
            "aliases": dict(runspec.ALIASES),
        }

    def setting_label(self, config: dict[str, Any]) -> str:
        """The table row a trial belongs to, e.g. 'grouping=kmeans' (seed is not a row); in a
        search, the values it sampled ('lr=0.00031,num_learners=4')."""
        config = self.overrides(config)
        shown = [f"{r}={config.get(r, self.run.get(r))}" for r in self.rows]
        shown += [f"{name}={short_value(config[name])}" for name in self.search if name in config and name not in self.rows]
        return ",".join(shown)

    @property
    def trial_count(self) -> int:
        return len(self.grid_points()) * self.num_samples


def short_value(value: Any) -> str:
    """A sampled value as a label shows it: floats to 3 significant digits (0.000312, 0.25)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    if not grid:
        return [{}]
    axes = list(grid)
    return [Experiment.overrides(dict(zip(axes, values))) for values in itertools.product(*(grid[a] for a in axes))]


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


def load_experiment(name_or_path: str | os.PathLike, preset: str | None = None, overrides: list[str] | None = None) -> Experiment:
    """The experiment of a spec file (or a shipped experiment's name) at a preset. overrides:
    `dncml sweep --set` assignments, applied over the preset: `run.FIELD=VALUE` (or
    `FIELD=VALUE`) sets a field of every run, `grid.AXIS=[v1, v2]` replaces (or adds) a grid
    axis; values are YAML."""
    path = experiment_path(name_or_path)
    try:
        raw = runspec.load_yaml(path.read_text(), str(path)) or {}
    except runspec.SpecError as error:
        raise ExperimentError(str(error)) from None
    run_overrides, grid_overrides = parse_sweep_overrides(overrides or [])
    try:
        return _resolve(raw, path, preset, run_overrides, grid_overrides)
    except runspec.SpecError as error:
        raise ExperimentError(f"{path}: {error}") from None


def parse_sweep_overrides(assignments: list[str]) -> tuple[dict[str, Any], dict[str, list]]:
    """`["run.K=8", "grid.seed=[0, 1, 2]"]` -> ({"num_learners": 8}, {"seed": [0, 1, 2]})."""
    run: dict[str, Any] = {}
    grid: dict[str, list] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ExperimentError(f"--set {item!r}: write run.FIELD=VALUE or grid.AXIS=[v1, v2]")
        try:
            value = runspec.load_yaml(text, f"--set {key.strip()}") if text.strip() else None
        except runspec.SpecError as error:
            raise ExperimentError(f"--set {item[:200]!r}: {str(error).splitlines()[0]}") from None
        scope, dot, name = key.strip().partition(".")
        if not dot:
            scope, name = "run", scope
        if scope == "grid":
            grid[name] = value if isinstance(value, list) else [value]
        elif scope == "run":
            try:
                run[runspec.canonical_field(name)] = value
            except runspec.SpecError as error:
                raise ExperimentError(f"--set {item!r}: {error}") from None
        else:
            raise ExperimentError(f"--set {item!r}: {scope!r} is neither run nor grid; write run.FIELD=VALUE or grid.AXIS=[v1, v2]")
    return run, grid


def _resolve(
    raw: dict, path: Path, preset: str | None, run_overrides: dict | None = None, grid_overrides: dict | None = None
) -> Experiment:
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: an experiment is a mapping of keys, got {type(raw).__name__}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ExperimentError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_KEYS))}")
    presets = _mapping(raw.get("presets"), path, "presets")
    preset = preset or raw.get("default_preset") or ("quick" if "quick" in presets else None)
    if preset is not None and preset not in presets:
        allowed = ", ".join(presets) or "none defined"
        raise ExperimentError(f"{path}: unknown preset {preset!r}; this experiment has: {allowed}")
    layer = _mapping(presets.get(preset), path, f"presets.{preset}") if preset else {}
    unknown = set(layer) - PRESET_KEYS
    if unknown:
        raise ExperimentError(
            f"{path}: preset {preset!r}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(PRESET_KEYS))}"
        )

    name = raw.get("name") or path.stem
    base = layer.get("base", raw.get("base"))
    run: dict[str, Any] = {}
    if base:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            raise ExperimentError(f"{path}: base run {base!r} not found at {base_path}")
        try:
            run.update(_canonical(runspec.load_yaml(base_path.read_text(), f"{path}: base run {base!r}") or {}, f"{base_path}"))
        except runspec.SpecError as error:
            raise ExperimentError(str(error)) from None
    run.update(_canonical(raw.get("run") or {}, "run"))
    run.update(_canonical(layer.get("run") or {}, f"presets.{preset}.run"))
    run.update(run_overrides or {})
    run.setdefault("name", name)

    written_grid = _grid(raw.get("grid"), path, "grid")  # the grid the table is written for
    grid = {**written_grid, **_grid(layer.get("grid"), path, f"presets.{preset}.grid"), **_grid(grid_overrides, path, "--set grid")}
    search = {}
    for key, distribution in {
        **_mapping(raw.get("search"), path, "search"),
        **_mapping(layer.get("search"), path, f"presets.{preset}.search"),
    }.items():
        search[_field(key, path, "search")] = distribution
    resources = {
        **RESOURCE_KEYS,
        **_mapping(raw.get("resources"), path, "resources"),
        **_mapping(layer.get("resources"), path, f"presets.{preset}.resources"),
    }
    unknown = set(resources) - set(RESOURCE_KEYS)
    if unknown:
        raise ExperimentError(f"{path}: resources: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(RESOURCE_KEYS)}")
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise ExperimentError(f"{path}: mode {mode!r}: allowed values are max, min")
    experiment = Experiment(
        name=str(name),
        path=path,
        preset=preset or "",
        description=str(layer.get("description", raw.get("description", ""))),
        run=run,
        grid=grid,
        search=search,
        rows=_rows(raw.get("rows"), grid, path),
        metric=str(raw.get("metric", metric_keys.SELECTION_METRIC)),
        mode=mode,
        num_samples=layer.get("num_samples", raw.get("num_samples", 1)),
        resources=resources,  # both checked in validate
        max_concurrent=layer.get("max_concurrent", raw.get("max_concurrent")),
        asha=layer.get("asha", raw.get("asha")),
        table=copy.deepcopy(_mapping(raw.get("table"), path, "table")),
        plot=copy.deepcopy(_mapping(raw.get("plot"), path, "plot")),
    )
    validate(experiment, written_grid)
    return experiment


def _mapping(values: Any, path: Path, key: str) -> dict:
    """An optional mapping key (null: empty)."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ExperimentError(f"{path}: {key}: expected a mapping, got {type(values).__name__} {values!r}")
    return values


def _field(name: Any, path: Path, key: str) -> str:
    """A RunSpec field name (aliases K, T, m, d resolved), or an error naming the key."""
    try:
        return runspec.canonical_field(str(name))
    except runspec.SpecError as error:
        raise ExperimentError(f"{path}: {key}: {error}") from None


def _canonical(values: dict, where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ExperimentError(f"{where}: expected a mapping of RunSpec fields")
    if "run" in values and isinstance(values["run"], dict):
        values = values["run"]
    return {runspec.canonical_field(str(k)): v for k, v in values.items()}


def _grid(values: Any, path: Path, key: str) -> dict[str, list]:
    """Axis -> values; an axis whose values are all mappings is linked (its fields vary together)."""
    grid = {}
    for axis, axis_values in _mapping(values, path, key).items():
        axis_values = list(axis_values) if isinstance(axis_values, (list, tuple)) else [axis_values]
        if not axis_values:
            raise ExperimentError(f"{path}: grid axis {axis!r} has no values")
        if all(isinstance(v, dict) for v in axis_values):  # a linked axis: fields that vary together
            grid[str(axis)] = [_canonical(v, f"{path}: {key}.{axis}") for v in axis_values]
        else:
            grid[_field(axis, path, key)] = axis_values
    return grid


def _rows(rows: Any, grid: dict[str, list], path: Path) -> list[str]:
    """The RunSpec fields a table row stands for; by default every grid axis but the seed (a
    linked axis by its fields)."""
    linked = {a: list(dict.fromkeys(f for point in v for f in point)) for a, v in grid.items() if isinstance(v[0], dict)}
    if not rows:
        return [f for a in grid if a != "seed" for f in linked.get(a, [a])]
    rows = [rows] if isinstance(rows, str) else rows
    if not isinstance(rows, list) or not all(isinstance(r, str) for r in rows):
        raise ExperimentError(f"{path}: rows: a RunSpec field or a list of them, got {rows!r}")
    for row in rows:
        if row in linked:
            raise ExperimentError(
                f"{path}: rows: {row!r} is a linked grid axis; name the RunSpec fields it varies instead: {', '.join(linked[row])}"
            )
    return [_field(r, path, "rows") for r in rows]


# ---------------------------------------------------------------------------------------------
def validate(experiment: Experiment, written_grid: dict[str, list] | None = None) -> None:
    """Everything a sweep would trip over later, one concern at a time: the names, the base run
    and every grid point, the search space, the metric, ASHA, the trial counts, the resources and
    the table's baseline (checked against this preset's grid or `written_grid`, the grid the
    table was written for: a smoke preset may leave the baseline row out)."""
    _check_name(experiment)
    specs = _check_runs(experiment)
    _check_run_names(experiment, specs)
    _check_search(experiment)
    _check_metric(experiment, specs)
    _check_asha(experiment, specs[0][1])
    _check_counts(experiment)
    _check_resources(experiment)
    _check_baseline(experiment, specs, written_grid or {})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_runs(experiment: Experiment) -> list[tuple[str, runspec.RunSpec]]:
    """The base run (a sweep prepares its data and sizes ASHA from it) and every grid point must
    be valid RunSpecs; returns them as (where, spec)."""
    try:
        specs = [("the base run", experiment.run_spec())]
    except runspec.SpecError as error:
        raise ExperimentError(f"{experiment.path}: the base run: {error}") from None
    for point in experiment.grid_points() if experiment.grid else []:
        where = "grid point " + ", ".join(f"{k}={v}" for k, v in point.items())
        try:
            specs.append((where, experiment.run_spec(point)))
        except runspec.SpecError as error:
            raise ExperimentError(f"{experiment.path}: {where}: {error}") from None
    return specs


def checked_specs(experiment: Experiment) -> list[tuple[str, runspec.RunSpec]]:
    """(where, spec) of every run the spec checks cover: the base run, every grid point and
    every search corner (low and high, each choice, one field at a time on the base run; the
    corners that are no valid RunSpec are left out: those samples fail as invalid). The sweep
    checks them against the data before any trial starts."""
    specs = _check_runs(experiment)
    for name, distribution in experiment.search.items():
        kind, args = next(iter(distribution.items()))
        where = f"search.{name}"
        corners = _choice_values(args, where) if kind == "choice" else _range_corners(name, kind, args, where)
        for label, value in corners:
            if sample_is_valid(experiment, {name: value}) is None:
                specs.append((f"search corner {name}={value!r} ({kind} {label})", experiment.run_spec({name: value})))
    return specs


def _valid_name(name: str) -> bool:
    return bool(NAME_PATTERN.match(name)) and ".." not in name


def _check_name(experiment: Experiment) -> None:
    """The experiment's name: a folder of the results store, and the prefix of its sweeps' ids
    (and the base run's name when the run has none)."""
    if not _valid_name(experiment.name):
        raise ExperimentError(f"{experiment.path}: name {experiment.name!r}: {NAME_RULE}")


def _check_run_names(experiment: Experiment, specs: list[tuple[str, runspec.RunSpec]]) -> None:
    """Every run's name: a folder of runs/ and the prefix of its trial ids."""
    for where, spec in specs:
        if not _valid_name(spec.name):
            raise ExperimentError(f"{experiment.path}: run name {spec.name!r} ({where}): {NAME_RULE}")


def _check_search(experiment: Experiment) -> None:
    """Each distribution well formed, its type fit for the field, and its corners (low and high,
    every choice) valid RunSpecs on the base run. Interior samples are checked per trial
    (`sample_is_valid`)."""
    if experiment.search and experiment.grid:
        raise ExperimentError(
            f"{experiment.path}: a spec has either grid axes (Tune's grid) or a search space "
            f"(Optuna), not both: Tune's grid_search cannot be combined with OptunaSearch"
        )
    for name, distribution in experiment.search.items():
        where = f"{experiment.path}: search.{name}"
        if not isinstance(distribution, dict) or len(distribution) != 1 or next(iter(distribution)) not in DISTRIBUTIONS:
            raise ExperimentError(f"{where}: write one of {', '.join(DISTRIBUTIONS)}, e.g. {{loguniform: [1e-4, 1e-2]}}")
        kind, args = next(iter(distribution.items()))
        corners = _choice_values(args, where) if kind == "choice" else _range_corners(name, kind, args, where)
        for label, value in corners:
            try:
                experiment.run_spec({name: value})
            except runspec.SpecError as error:
                raise ExperimentError(f"{where}: {kind} {label} {value!r}: {error}") from None


def _choice_values(args: Any, where: str) -> list[tuple[str, Any]]:
    if not isinstance(args, (list, tuple)) or not args:
        raise ExperimentError(f"{where}: choice needs a non-empty list of values, got {args!r}")
    for value in args:
        if isinstance(value, (dict, list, tuple)):
            raise ExperimentError(f"{where}: choice value {value!r}: Optuna's choices are numbers, strings, booleans or null")
    return [("value", value) for value in args]


def _range_corners(name: str, kind: str, args: Any, where: str) -> list[tuple[str, Any]]:
    """uniform / loguniform / randint [low, high], quniform [low, high] or [low, high, q] (q
    defaults to 1). Optuna samples low and high inclusive: both are corners."""
    shape = "[low, high] or [low, high, q]" if kind == "quniform" else "[low, high]"
    sizes = (2, 3) if kind == "quniform" else (2,)
    if not isinstance(args, (list, tuple)) or len(args) not in sizes or not all(_is_number(a) for a in args):
        raise ExperimentError(f"{where}: {kind} needs {shape} of finite numbers, got {args!r}")
    low, high, q = args[0], args[1], args[2] if len(args) == 3 else 1
    if not low < high:
        raise ExperimentError(f"{where}: {kind} needs [low, high] with low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ExperimentError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "quniform" and not 0 < q <= high - low:
        raise ExperimentError(f"{where}: quniform's q must be in (0, high - low] = (0, {high - low:g}], got {q}")
    if kind == "randint" and not (_is_int(low) and _is_int(high)):
        raise ExperimentError(f"{where}: randint needs integer bounds [low, high] (both inclusive), got [{low}, {high}]")
    base, _ = runspec._field_type(name)
    if base not in (int, float):
        raise ExperimentError(f"{where}: {kind} samples numbers, and {name!r} is a {base.__name__} field: use choice: [...]")
    integral = kind == "randint" or (kind == "quniform" and all(_is_int(a) for a in (low, high, q)))
    if base is int and not integral:
        raise ExperimentError(
            f"{where}: {name!r} is an integer field and {kind} {list(args)} samples non-integers: use randint "
            f"[low, high], choice of integers, or quniform [low, high, q] with integer low, high and q (its samples, "
            f"low + k*q, are then integers)"
        )
    return [("low", low), ("high", high)]


def _check_metric(experiment: Experiment, specs: list[tuple[str, runspec.RunSpec]]) -> None:
    """The sweep selects (and ASHA prunes) on `best_<metric>`, which a run reports only for its
    own selection_metric: the metric must be that, and one the runs report."""
    metric = experiment.metric
    if not metric.startswith(metric_keys.set_prefix(metric_keys.VALIDATION)):
        raise ExperimentError(f"{experiment.path}: metric {metric!r}: select on a validation metric (val_...), never on test")
    for where, spec in specs:
        reported = [m for m in metric_keys.metric_names(spec) if m.startswith(metric_keys.set_prefix(metric_keys.VALIDATION))]
        if metric not in reported:
            raise ExperimentError(
                f"{experiment.path}: metric {metric!r}: not reported by {where} (dataset {spec.dataset!r}); allowed: {', '.join(reported)}"
            )
        if metric != spec.selection_metric:
            raise ExperimentError(
                f"{experiment.path}: metric {metric!r} differs from the selection_metric "
                f"{spec.selection_metric!r} of {where}: the sweep selects and ASHA prunes on best_{metric}, which a "
                f"run reports only for its selection_metric; set `selection_metric: {metric}` in run:"
            )


def _check_asha(experiment: Experiment, base: runspec.RunSpec) -> None:
    asha, where = experiment.asha, f"{experiment.path}: asha"
    if asha is None:
        return
    if not isinstance(asha, dict):
        raise ExperimentError(f"{where}: a mapping {{grace_period: ..., reduction_factor: ...}} or null, got {asha!r}")
    allowed = ", ".join(ASHA_KEYS)
    if "max_t" in asha:
        raise ExperimentError(
            f"{where}.max_t: not set here: ASHA's max_t is the run's total epochs (warmup_epochs + "
            f"epochs + finetune_epochs = {base.total_epochs}); allowed keys: {allowed}"
        )
    unknown = set(asha) - set(ASHA_KEYS)
    if unknown:
        raise ExperimentError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: {allowed}")
    if not asha:
        return  # {}: no scheduler, like null
    grace = asha.get("grace_period", ASHA_KEYS["grace_period"])
    if not _is_int(grace) or grace < 1:
        raise ExperimentError(f"{where}.grace_period = {grace!r}: must be an integer >= 1 (epochs)")
    if grace > base.total_epochs:
        raise ExperimentError(
            f"{where}.grace_period = {grace}: must be <= the run's total epochs (warmup_epochs + "
            f"epochs + finetune_epochs = {base.total_epochs}): no trial runs longer"
        )
    factor = asha.get("reduction_factor", ASHA_KEYS["reduction_factor"])
    if not _is_number(factor) or factor <= 1:
        raise ExperimentError(f"{where}.reduction_factor = {factor!r}: must be a number > 1")


def _check_counts(experiment: Experiment) -> None:
    samples, concurrent = experiment.num_samples, experiment.max_concurrent
    if not _is_int(samples) or samples < 1:
        raise ExperimentError(
            f"{experiment.path}: num_samples = {samples!r}: must be an integer >= 1 (trials per grid point, or the search's samples)"
        )
    if concurrent is not None and (not _is_int(concurrent) or concurrent < 1):
        raise ExperimentError(
            f"{experiment.path}: max_concurrent = {concurrent!r}: must be an integer >= 1, or null (as many trials as the cluster fits)"
        )


def _check_resources(experiment: Experiment) -> None:
    resources, where = experiment.resources, f"{experiment.path}: resources"
    workers = resources["num_workers"]
    if not _is_int(workers) or workers < 1:
        raise ExperimentError(f"{where}.num_workers = {workers!r}: must be an integer >= 1")
    cpus = resources["cpus_per_worker"]
    if not _is_number(cpus) or cpus <= 0:
        raise ExperimentError(f"{where}.cpus_per_worker = {cpus!r}: must be a finite number > 0")
    for key in ("gpus_per_worker", "actor_gpus"):
        if not _is_number(resources[key]) or resources[key] < 0:
            raise ExperimentError(f"{where}.{key} = {resources[key]!r}: must be a finite number >= 0")
    if not isinstance(resources["use_gpu"], bool):
        raise ExperimentError(f"{where}.use_gpu = {resources['use_gpu']!r}: must be true or false")
    if resources["gpus_per_worker"] > 0 and not resources["use_gpu"]:
        raise ExperimentError(
            f"{where}.gpus_per_worker = {resources['gpus_per_worker']}: the workers get GPUs only "
            "with use_gpu: true (without it they train on CPU and the GPUs are never reserved); "
            "set use_gpu: true, or gpus_per_worker: 0"
        )


def _check_baseline(experiment: Experiment, specs: list[tuple[str, runspec.RunSpec]], written_grid: dict[str, list]) -> None:
    """table.baseline names the row the others are compared with (as analysis/vocabulary.py
    reads it): a value of the single row field, a list or a comma-joined string of one value per
    row field, or a mapping of some row fields. Some grid point must have it."""
    baseline = experiment.table.get("baseline")
    if baseline is None:
        return
    where = f"{experiment.path}: table.baseline {baseline!r}"
    wanted = {}
    for name, value in _baseline_fields(baseline, experiment.rows, where).items():
        try:
            wanted[name] = runspec.coerce(name, value)
        except runspec.SpecError as error:
            raise ExperimentError(f"{where}: {error}") from None
    base = specs[0][1]
    points = specs[1:] if experiment.grid else specs  # this preset's grid points, as RunSpecs
    settings = [tuple(getattr(spec, name) for name in wanted) for _, spec in points]
    if written_grid and written_grid != experiment.grid:

        def value_of(point: dict[str, Any], name: str) -> Any:
            try:
                return runspec.coerce(name, point[name]) if name in point else getattr(base, name)
            except runspec.SpecError:
                return None

        settings += [tuple(value_of(point, name) for name in wanted) for point in _grid_points(written_grid)]
    settings = list(dict.fromkeys(settings))
    if tuple(wanted.values()) not in settings:
        have = "; ".join(", ".join(f"{n}={v}" for n, v in zip(wanted, s)) for s in settings)
        raise ExperimentError(f"{where}: no grid point has {', '.join(f'{n}={v}' for n, v in wanted.items())}; the grid has: {have}")


def _baseline_fields(baseline: Any, rows: list[str], where: str) -> dict[str, Any]:
    if not rows:
        raise ExperimentError(f"{where}: the table has no rows (set rows:), so a baseline names no row")
    if isinstance(baseline, dict):
        fields = {}
        for key, value in baseline.items():
            try:
                name = runspec.canonical_field(str(key))
            except runspec.SpecError as error:
                raise ExperimentError(f"{where}: {error}") from None
            if name not in rows:
                raise ExperimentError(f"{where}: {name!r} is not a row field; rows: {', '.join(rows)}")
            fields[name] = value
        if not fields:
            raise ExperimentError(f"{where}: names no row field; rows: {', '.join(rows)}")
        return fields
    if isinstance(baseline, (list, tuple)):
        if len(baseline) != len(rows):
            raise ExperimentError(f"{where}: a list gives one value per row field ({', '.join(rows)}), got {len(baseline)} value(s)")
        return dict(zip(rows, baseline))
    parts = str(baseline).split(",") if len(rows) > 1 else [baseline]
    return dict(zip(rows, parts)) if len(parts) == len(rows) else {rows[0]: baseline}


def sample_is_valid(experiment: Experiment, config: dict[str, Any]) -> str | None:
    """None if a sampled configuration makes a valid RunSpec, else the reason."""
    try:
        experiment.run_spec(config)
        return None
    except runspec.SpecError as error:
        return str(error)
