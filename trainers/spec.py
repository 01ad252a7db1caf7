"""RunSpec: the one typed, validated description of a divide-and-conquer run.

Every knob of a run lives here, with the paper's defaults where the paper has one
(Sanakoyeu et al., CVPR 2019, Sections 3-4; TPAMI 2021). A spec comes from YAML, a dict or `--set field=value` overrides; anything
wrong fails here, early, with the field's name and the values it allows.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import groupings, metric_keys, registry
from .data.base import DATA_ROOT_VARIABLES, data_root_variables  # declared where roots are read
from .plan import DivisionPlan

DATASETS = registry.DATASETS.names()  # as at import; validation reads the registry itself (a dataset declared later)
BACKBONES = registry.BACKBONES.names()
GROUPINGS = groupings.GROUPINGS  # the table itself: its names are the choices (a grouping added there is valid here)
HIERARCHIES = ("flat", "binary")
CLUSTER_SPACES = ("embedding", "backbone")
EMBEDDING_SOURCES = ("full_pass", "training_pass")
MASKS = ("fixed", "learned")
LOSSES = registry.LOSSES.names()
DEVICES = ("auto", "cpu", "cuda")
# Where photos are decoded and augmented: cpu = PIL in `loader_workers` processes; gpu = the
# tensor path (workers read encoded bytes, the training process decodes whole batches with
# torchvision.io.decode_jpeg and augments them as tensors on the run's device: nvjpeg on CUDA,
# libjpeg-turbo on a CPU run); auto = gpu on a CUDA device, cpu otherwise. Glyphs ignore it.
DATA_PATHS = ("auto", "cpu", "gpu")
FREEZE_BN = ("auto", "none", "stats", "all")  # auto: all when the backbone is pretrained, else none
# selected: the test sets once, on the weights model selection chose (val every evaluation);
# every_eval: the test sets at every evaluation too (per-epoch test curves, as the authors log).
TEST_EVALS = ("selected", "every_eval")

RECIPES = ("paper", "authors_code")
EMBEDDING_PARAMETERS = ("per_learner", "one")
LEARNER_SCHEDULES = ("uniform", "round_robin")
NEGATIVES = ("distance_weighted", "nearest")
STRAY_SAMPLES = ("repair", "leave_out")
EMBEDDING_INITS = ("default", "xavier_normal")

# What each recipe chooses for the fields left null (`RunSpec.setting`). `paper`: the CVPR text
# (dncml's reading of it); `authors_code`: what CompVis/metric-learning-divide-and-conquer does
# (README, "Two recipes"). `full_embedding_from` and `freeze_bn` are derived in their properties.
RECIPE_SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {
        "embedding_parameter": "per_learner",  # K parameters: a step on learner k moves only slice k
        "learner_schedule": "uniform",  # N / B steps, a uniformly drawn learner each
        "negatives": "distance_weighted",  # margin loss: Wu et al.'s sampling, as the paper says
        "learn_beta": True,
        "cluster_space": "embedding",
        "stray_samples": "repair",  # a class's stray images join the cluster holding most of it
        "embedding_init": "default",  # torch's Linear init of the one d-dim layer
        "embedding_dropout": 0.0,
    },
    "authors_code": {
        "embedding_parameter": "one",  # one parameter: Adam's momentum moves the other slices too
        "learner_schedule": "round_robin",  # K x max_c floor(n_c / B) steps, learners in turn
        "negatives": "nearest",  # for each anchor the m - 1 nearest negatives at distance >= 0.5
        "learn_beta": False,  # beta stays 1.2
        "cluster_space": "backbone",  # normalised backbone features, test transforms
        "stray_samples": "leave_out",  # a sample alone of its class in a cluster sits the round out
        "embedding_init": "xavier_normal",  # per slice
        "embedding_dropout": 0.01,  # before the embedding layer
    },
}

# The fields that take one of a fixed set of values, and the values.
CHOICES = {
    "recipe": RECIPES,
    "embedding_parameter": EMBEDDING_PARAMETERS,
    "learner_schedule": LEARNER_SCHEDULES,
    "negatives": NEGATIVES,
    "stray_samples": STRAY_SAMPLES,
    "embedding_init": EMBEDDING_INITS,
    "dataset": DATASETS,
    "backbone": BACKBONES,
    "grouping": GROUPINGS,
    "hierarchy": HIERARCHIES,
    "cluster_space": CLUSTER_SPACES,
    "embedding_source": EMBEDDING_SOURCES,
    "masks": MASKS,
    "loss": LOSSES,
    "device": DEVICES,
    "data_path": DATA_PATHS,
    "freeze_bn": FREEZE_BN,
    "test_eval": TEST_EVALS,
}


def choices() -> dict[str, tuple[str, ...]]:
    """CHOICES with the registries' names read now: a dataset, backbone or loss declared after
    import (CONTRIBUTING.md) is a valid value without touching this module."""
    live = {"dataset": registry.DATASETS, "backbone": registry.BACKBONES, "loss": registry.LOSSES}
    return {**CHOICES, **{name: tuple(table.names()) for name, table in live.items()}}


# Short names used in the paper and on the command line (`--set K=8`).
ALIASES = {"K": "num_learners", "T": "recluster_every", "m": "samples_per_class", "d": "embedding_dim"}


# Names that become file and directory names (run names, experiment and sweep names): they must
# not be able to leave their folder.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def valid_name(value: object) -> bool:
    return isinstance(value, str) and bool(NAME.match(value)) and ".." not in value


# A spec's YAML, once its aliases are expanded: a real spec has a few hundred values. An alias
# bomb (`a: &a [x, x]`, `b: &b [*a, *a]`, ...) of a few hundred bytes expands to 10^9 values
# (66 s and 3 GB to fail, an experiment card of 608 MB): refused by counting, never expanded.
YAML_MAX_VALUES = 20_000
YAML_MAX_CHARACTERS = 1_000_000


def load_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load(text)`, refused (SpecError) when the document it describes is larger than
    YAML_MAX_VALUES values or YAML_MAX_CHARACTERS characters of text once aliases are expanded."""
    if len(text) > YAML_MAX_CHARACTERS:
        raise SpecError(f"{where}: {len(text)} characters of YAML, at most {YAML_MAX_CHARACTERS}")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"{where}: not valid YAML: {str(error)[:500]}") from None
    values, characters, stack = 0, 0, [document]
    while stack:  # counts the expanded tree without building it: stops at the bound
        value = stack.pop()
        values += 1
        if isinstance(value, str):
            characters += len(value)
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        if values > YAML_MAX_VALUES or characters > YAML_MAX_CHARACTERS:
            raise SpecError(
                f"{where}: the YAML expands to more than {YAML_MAX_VALUES} values or {YAML_MAX_CHARACTERS} "
                "characters (aliases repeated into a bomb?): refused"
            )
    return document


def shown(value: Any) -> str:
    """A value as a message shows it: its repr, at most 200 characters."""
    import reprlib

    short = reprlib.Repr()  # (keyword arguments only from Python 3.12)
    short.maxlevel, short.maxdict, short.maxlist, short.maxtuple, short.maxstring, short.maxother = 3, 8, 8, 8, 120, 120
    return short.repr(value)[:200]


# Upper bounds a real run can need (the paper's largest settings with room to spare): beyond
# them a typo or a hostile spec would hang (listing divisors of a prime d), build 10^5 layers or
# allocate gigabytes before failing.
UPPER_BOUNDS: dict[str, int] = {
    "glyph_classes": 100_000,
    "glyph_instances": 1_200,
    "image_size": 1_024,
    "dataset_seed": 2**63 - 1,
    "embedding_dim": 8_192,
    "num_learners": 1_024,
    "recluster_every": 10_000,
    "stale_rounds": 10_000,
    "kmeans_iterations": 100_000,
    "kmeans_sample": 100_000_000,
    "full_embedding_from": 100_000,
    "freeze_backbone_epochs": 10_000,
    "batch_size": 65_536,
    "samples_per_class": 4_096,
    "steps_per_epoch": 10_000_000,
    "warmup_epochs": 10_000,
    "epochs": 100_000,
    "finetune_epochs": 10_000,
    "lr_decay_every": 100_000,
    "eval_every": 100_000,
    "eval_batch_size": 65_536,
    "seed": 2**63 - 1,
    "loader_workers": 256,
    "checkpoint_every": 100_000,
}


class SpecError(ValueError):
    """An invalid RunSpec; the message names the field and what it allows."""


@dataclass
class RunSpec:
    name: str = "run"

    # --- data ---
    dataset: str = "glyphs"
    data_root: str | None = None  # the unpacked archive of a benchmark; glyphs ignore it
    glyph_classes: int | None = None  # glyphs, glyph_families: code points; None = every eligible one
    glyph_instances: int = 24  # glyphs: 12 faces x augmentations (glyph_families: a third of it per class)
    image_size: int | None = None  # None: 32 for glyphs, 224 for photos
    crop_scale: float = 0.16  # photos: the training crop covers crop_scale..1 of the resized image's area
    val_fraction: float = 0.15  # of the training classes, for model selection
    dataset_seed: int = 0

    # --- recipe: paper (the CVPR text) | authors_code (the authors' public code); a null field
    # below takes the recipe's choice (RECIPE_SETTINGS), a set one overrides it ---
    recipe: str = "paper"

    # --- model ---
    backbone: str = "glyphnet"
    # a local weights file; "cache": ImageNet ResNet in $TORCH_HOME; "glyphs": GlyphNet pre-trained on other glyphs
    pretrained: str | None = None
    freeze_bn: str = "auto"  # backbone BatchNorm: none, stats (running statistics), all (statistics and affine)
    embedding_dim: int = 128  # d
    num_learners: int = 4  # K
    masks: str = "fixed"  # fixed: CVPR slices; learned: TPAMI soft masks
    mask_regularization: float = 0.01  # TPAMI: weight of the masks' mean pairwise cosine similarity
    mask_lr_multiplier: float = 100.0  # TPAMI: the masks' learning rate is this times `lr`
    embedding_parameter: str | None = None  # per_learner (K parameters) | one (one d-dim parameter)
    embedding_init: str | None = None  # default | xavier_normal (per slice)
    embedding_dropout: float | None = None  # dropout on the backbone features, before the embedding

    # --- division ---
    grouping: str = "kmeans"
    hierarchy: str = "flat"
    recluster_every: int = 2  # T, in epochs
    cluster_space: str | None = None  # embedding | backbone
    stray_samples: str | None = None  # repair | leave_out: a class's only image in a cluster
    embedding_source: str = "full_pass"
    stale_rounds: int = 1  # training_pass: a vector computed up to this many rounds ago is reused
    kmeans_iterations: int = 100
    kmeans_sample: int | None = None  # train the centroids on this many sampled points (None: all, the paper)
    # epoch from which the loss uses the full embedding; null: never (paper), or the authors' rule,
    # ceil(8/19 x the conquer phase's first epoch) (authors_code: epoch 80 of their 200)
    full_embedding_from: int | None = None
    freeze_backbone_epochs: int = 0  # TPAMI: epochs the backbone rests from each re-clustering on

    # --- loss ---
    loss: str = "margin"
    margin: float = 0.2  # margin loss alpha; also contrastive / triplet margin
    margin_beta: float = 1.2
    learn_beta: bool | None = None  # margin loss: beta learned (paper) or fixed (authors_code)
    negatives: str | None = None  # margin loss: distance_weighted | nearest (m - 1 per anchor, at >= 0.5)
    beta_per_class: bool = False

    # --- sampling ---
    batch_size: int = 128
    samples_per_class: int = 4  # m
    steps_per_epoch: int | None = None  # None: training images // batch size (uniform), K x max_c n_c // B (round_robin)
    learner_schedule: str | None = None  # uniform (a random learner per step) | round_robin (learners in turn)

    # --- schedule (epochs) ---
    warmup_epochs: int = 0  # full embedding, all data, before the first division
    epochs: int = 20  # divide epochs
    finetune_epochs: int = 0  # conquer: full embedding, all data

    # --- optimisation ---
    lr: float = 1e-5  # backbone
    lr_embedding: float = 1e-5
    lr_loss: float = 1e-3  # loss parameters: beta, proxies
    weight_decay: float = 1e-4
    lr_decay_every: int = 0  # step decay period in epochs; 0 = constant (the authors)
    lr_decay_gamma: float = 0.1

    # --- evaluation ---
    eval_every: int = 1
    eval_batch_size: int = 256
    selection_metric: str = metric_keys.SELECTION_METRIC
    test_eval: str = "selected"  # when the test sets are embedded: see TEST_EVALS

    # --- runtime ---
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool = True  # images and convolution weights in NHWC (see runtime.memory_format)
    loader_workers: int = 0
    data_path: str = "auto"  # photos: where images are decoded and augmented (see DATA_PATHS)
    checkpoint_every: int = 1  # epochs between checkpoints (the validation-selected epoch and the last always get one)

    # ------------------------------------------------------------------
    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.epochs + self.finetune_epochs

    @property
    def resolved_image_size(self) -> int:
        return self.image_size or registry.DATASETS.info(self.dataset).image_size

    def setting(self, name: str) -> Any:
        """A recipe-governed field's value: as given, or the recipe's choice where it is null."""
        value = getattr(self, name)
        return RECIPE_SETTINGS[self.recipe][name] if value is None else value

    def recipe_settings(self) -> dict[str, Any]:
        """Every recipe-governed choice as this run resolves it (given or the recipe's)."""
        return {
            **{name: self.setting(name) for name in RECIPE_SETTINGS[self.recipe]},
            "full_embedding_from": self.resolved_full_embedding_from,
            "freeze_bn": self.resolved_freeze_bn,
        }

    @property
    def resolved_full_embedding_from(self) -> int | None:
        """`full_embedding_from`, or the recipe's: never (paper); the authors' `epoch >=
        finetune_epoch x 8 / 19`, with our conquer phase's first epoch as their finetune epoch."""
        if self.full_embedding_from is not None or self.recipe == "paper":
            return self.full_embedding_from
        conquer = self.warmup_epochs + self.epochs
        return -(-8 * conquer // 19)

    @property
    def plan(self) -> DivisionPlan:
        """How this run divides the embedding and the data over time (see `plan.py`)."""
        return DivisionPlan(
            num_learners=self.num_learners,
            grouping=self.grouping,
            hierarchy=self.hierarchy,
            recluster_every=self.recluster_every,
            warmup_epochs=self.warmup_epochs,
            epochs=self.epochs,
            finetune_epochs=self.finetune_epochs,
            full_embedding_from=self.resolved_full_embedding_from,
            freeze_backbone_epochs=self.freeze_backbone_epochs,
        )

    @property
    def embedding_form(self) -> str:
        """How the test-time embedding is formed: `slices`, the concatenation of the K
        separately L2-normalised learner slices (the authors' model, when the embedding is split
        into fixed slices), or `whole`, one d-dim vector normalised as a whole (the baseline,
        kmeans_nosplit, and the TPAMI learned masks, which are off at test time)."""
        split = self.plan.splits_embedding and self.masks == "fixed" and self.num_learners > 1
        return "slices" if split else "whole"  # one slice normalised is the whole normalised

    @property
    def resolved_freeze_bn(self) -> str:
        """none | stats | all: `auto` freezes a pretrained backbone's statistics and affine
        (paper) or its statistics only, its affine weights training (authors_code)."""
        if self.freeze_bn != "auto":
            return self.freeze_bn
        if self.pretrained is None:
            return "none"
        return "stats" if self.recipe == "authors_code" else "all"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunSpec:
        return from_dict({**self.to_dict(), **changes})

    def validate(self) -> RunSpec:
        _validate(self)
        return self


# ----------------------------------------------------------------------------------------------
def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(RunSpec)}


def _field_type(name: str) -> tuple[type, bool]:
    """(base type, optional?) of a RunSpec field, from its annotation."""
    hints = typing.get_type_hints(RunSpec)
    hint = hints[name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        base = next(a for a in args if a is not type(None))
        return base, True
    return hint, False


def canonical_field(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in _fields():
        close = difflib.get_close_matches(name, list(_fields()) + list(ALIASES), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SpecError(f"unknown RunSpec field {name!r}{hint}")
    return name


def coerce(name: str, value: Any) -> Any:
    """Convert a YAML / command-line value to the field's type, or a SpecError naming the field."""
    base, optional = _field_type(name)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~") and optional):
        if optional:
            return None
        raise SpecError(f"RunSpec field {name!r} may not be empty")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise SpecError(f"RunSpec field {name!r} must be {base.__name__}{' or null' if optional else ''}, got {shown(value)}")


def from_dict(values: dict[str, Any] | None, overrides: dict[str, Any] | None = None) -> RunSpec:
    """Build and validate a RunSpec from a mapping (aliases K, T, m, d accepted)."""
    merged: dict[str, Any] = {}
    for source in (values or {}), (overrides or {}):
        if not isinstance(source, dict):
            raise SpecError(f"a RunSpec must be a mapping of field: value, got {type(source).__name__}")
        for key, value in source.items():
            merged[canonical_field(str(key))] = value
    if merged.get("freeze_bn") in (True, False) and not isinstance(merged.get("freeze_bn"), str):  # older specs: true / false
        merged["freeze_bn"] = "all" if merged["freeze_bn"] else "none"
    coerced = {key: coerce(key, value) for key, value in merged.items()}
    return RunSpec(**coerced).validate()


def load(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> RunSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"RunSpec file not found: {path}")
    values = load_yaml(path.read_text(), str(path)) or {}
    if isinstance(values, dict) and "run" in values and isinstance(values["run"], dict):
        values = values["run"]  # allow `run:` as a top-level key
    try:
        return from_dict(values, overrides)
    except SpecError as error:
        if overrides:
            try:
                from_dict(values)
            except SpecError:
                pass
            else:  # the file alone is a valid spec: the error is the overrides'
                raise SpecError(f"--set (over {path}): {error}") from None
        raise SpecError(f"{path}: {error}") from None


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """`["K=8", "grouping=random"]` -> {"num_learners": "8", "grouping": "random"} (YAML-typed)."""
    result: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise SpecError(f"--set expects field=value, got {item!r}")
        key, raw = item.split("=", 1)
        result[canonical_field(key.strip())] = load_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
    return result


# ----------------------------------------------------------------------------------------------
def _choice(spec: RunSpec, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(spec, name)
    if value is None and name in RECIPE_SETTINGS["paper"]:
        return  # the recipe's choice
    if value not in allowed:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"RunSpec field {name!r} = {value!r}: allowed values are {', '.join(allowed)}{hint}")


def _at_least(spec: RunSpec, name: str, minimum: float) -> None:
    value = getattr(spec, name)
    if not value >= minimum:  # also False for NaN
        raise SpecError(f"RunSpec field {name!r} = {value}: must be >= {minimum}")


def _finite(spec: RunSpec) -> None:
    """NaN and infinity pass every comparison-based check (`nan < 0` is False): refuse them first."""
    for name, value in spec.to_dict().items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"RunSpec field {name!r} = {value}: must be a finite number")


def _bounded(spec: RunSpec) -> None:
    for name, maximum in UPPER_BOUNDS.items():
        value = getattr(spec, name)
        if value is not None and value > maximum:
            raise SpecError(f"RunSpec field {name!r} = {str(value)[:40]}: must be <= {maximum}")
    largest = registry.DATASETS.info(spec.dataset).max_image_size if spec.dataset in registry.DATASETS else None
    if largest is not None and spec.image_size is not None and spec.image_size > largest:
        raise SpecError(f"RunSpec field 'image_size' = {spec.image_size}: {spec.dataset} are rendered at most {largest} pixels")
    if spec.data_root is not None:
        if len(spec.data_root) > 4096:
            raise SpecError(f"RunSpec field 'data_root': {len(spec.data_root)} characters, at most 4096")
        others = [name for name in data_root_variables(spec.data_root) if name not in DATA_ROOT_VARIABLES]
        if others:
            raise SpecError(
                f"RunSpec field 'data_root' names ${{{others[0][:40]}}}: only "
                + ", ".join(f"${{{name}}}" for name in DATA_ROOT_VARIABLES)
                + " and ~ are expanded"
            )


def _validate(spec: RunSpec) -> None:
    _finite(spec)
    _bounded(spec)
    if not valid_name(spec.name):
        raise SpecError(
            f"RunSpec field 'name' = {spec.name!r}: use letters, digits, '.', '_' and '-' (at most 128, "
            "not starting with '.' or '-', no '..'): it names files of the run"
        )
    for name, allowed in choices().items():
        _choice(spec, name, allowed)
    for name, minimum in (
        ("embedding_dim", 1),
        ("num_learners", 1),
        ("recluster_every", 1),
        ("kmeans_iterations", 1),
        ("batch_size", 2),
        ("samples_per_class", 2),
        ("warmup_epochs", 0),
        ("epochs", 0),
        ("finetune_epochs", 0),
        ("eval_every", 1),
        ("eval_batch_size", 1),
        ("loader_workers", 0),
        ("lr", 0),
        ("lr_embedding", 0),
        ("lr_loss", 0),
        ("weight_decay", 0),
        ("lr_decay_every", 0),
        ("glyph_instances", 12),
        ("mask_regularization", 0),
        ("stale_rounds", 0),
        ("mask_lr_multiplier", 0),
        ("freeze_backbone_epochs", 0),
        ("seed", 0),
        ("dataset_seed", 0),
        ("checkpoint_every", 1),
    ):
        _at_least(spec, name, minimum)
    if spec.total_epochs < 1:
        raise SpecError("RunSpec: warmup_epochs + epochs + finetune_epochs must be >= 1")
    d, k = spec.embedding_dim, spec.num_learners
    if d % k:
        small = [i for i in range(1, math.isqrt(d) + 1) if d % i == 0]  # d <= 8192: at most 91 steps
        divisors = sorted({*small, *(d // i for i in small)})
        shown = ", ".join(map(str, divisors[:24])) + (", ..." if len(divisors) > 24 else "")
        raise SpecError(
            f"RunSpec field 'num_learners' (K) = {k}: K must divide the embedding size embedding_dim (d) = {d}; allowed K: {shown}"
        )
    if spec.hierarchy == "binary" and k & (k - 1):
        raise SpecError(f"RunSpec field 'num_learners' (K) = {k}: hierarchy 'binary' doubles K, so K must be a power of 2")
    grouping = GROUPINGS[spec.grouping]
    if spec.hierarchy == "binary" and grouping.binary_strategy is None:
        binary = groupings.names(lambda g: g.binary_strategy is not None)
        raise SpecError(
            f"RunSpec field 'hierarchy' = 'binary' splits every round's clusters in two: it needs grouping {' or '.join(map(repr, binary))}"
        )
    if spec.masks == "learned" and grouping.divides and not grouping.splits_embedding:
        raise SpecError(
            "RunSpec field 'masks' = 'learned' gives each cluster its own mask: it needs a grouping "
            f"that divides the embedding ({', '.join(groupings.names(lambda g: g.splits_embedding))}), not {spec.grouping}"
        )
    if spec.freeze_backbone_epochs >= spec.recluster_every:
        raise SpecError(
            f"RunSpec field 'freeze_backbone_epochs' = {spec.freeze_backbone_epochs}: must be < "
            f"recluster_every (T) = {spec.recluster_every}, or the backbone never trains in the divide phase"
        )
    if spec.full_embedding_from is not None and not 0 <= spec.full_embedding_from <= spec.total_epochs:
        raise SpecError(
            f"RunSpec field 'full_embedding_from' = {spec.full_embedding_from}: must be an epoch in [0, {spec.total_epochs}] or null"
        )
    m = spec.samples_per_class
    if spec.batch_size % m:
        raise SpecError(f"RunSpec field 'batch_size' = {spec.batch_size}: must be a multiple of samples_per_class (m) = {m}")
    if spec.batch_size // m < 2:
        raise SpecError(f"RunSpec field 'batch_size' = {spec.batch_size}: must hold at least 2 classes of m = {m} images")
    if spec.kmeans_sample is not None and spec.kmeans_sample < 2 * spec.num_learners:
        raise SpecError(f"RunSpec field 'kmeans_sample' = {spec.kmeans_sample}: must be >= 2 x K or null (all points)")
    if spec.steps_per_epoch is not None and spec.steps_per_epoch < 1:
        raise SpecError(f"RunSpec field 'steps_per_epoch' = {spec.steps_per_epoch}: must be >= 1 or null")
    if not 0.0 <= spec.val_fraction < 0.9:
        raise SpecError(f"RunSpec field 'val_fraction' = {spec.val_fraction}: must be in [0, 0.9)")
    if not 0.0 < spec.lr_decay_gamma <= 1.0:
        raise SpecError(f"RunSpec field 'lr_decay_gamma' = {spec.lr_decay_gamma}: must be in (0, 1]")
    if not 0.0 < spec.crop_scale <= 1.0:
        raise SpecError(f"RunSpec field 'crop_scale' = {spec.crop_scale}: must be in (0, 1] (a training crop's smallest area)")
    if spec.image_size is not None and not 16 <= spec.image_size <= 1024:
        raise SpecError(f"RunSpec field 'image_size' = {spec.image_size}: must be in [16, 1024] or null")
    if spec.glyph_instances % 12:
        raise SpecError(f"RunSpec field 'glyph_instances' = {spec.glyph_instances}: must be a multiple of 12 (the DejaVu faces)")
    if spec.glyph_classes is not None and spec.glyph_classes < 8:
        raise SpecError(f"RunSpec field 'glyph_classes' = {spec.glyph_classes}: must be >= 8 or null (all)")
    if grouping.needs_groups and not registry.DATASETS.info(spec.dataset).has_groups:
        with_groups = [name for name in registry.DATASETS.names() if registry.DATASETS.info(name).has_groups]
        raise SpecError(
            f"RunSpec field 'grouping' = {spec.grouping!r} needs a dataset with group labels "
            f"({', '.join(with_groups)}); {spec.dataset!r} has none"
        )
    if registry.DATASETS.info(spec.dataset).needs_root and spec.data_root is None:
        raise SpecError(f"RunSpec field 'data_root' is required for dataset {spec.dataset!r} (where its images are)")
    smallest = registry.BACKBONES.info(spec.backbone)["min_image_size"]
    if spec.resolved_image_size < smallest:
        raise SpecError(f"RunSpec field 'image_size' = {spec.resolved_image_size}: backbone {spec.backbone!r} needs >= {smallest}")
    # named weights and the backbones that take them
    named = {
        w: [b for b in BACKBONES if w in registry.BACKBONES.info(b)["pretrained"]]
        for b in BACKBONES
        for w in registry.BACKBONES.info(b)["pretrained"]
    }
    if spec.pretrained in named and spec.backbone not in named[spec.pretrained]:
        raise SpecError(
            f"RunSpec field 'pretrained' = {spec.pretrained!r} is for backbone {', '.join(named[spec.pretrained])}, not {spec.backbone!r}"
        )
    if spec.pretrained not in (None, *named) and not Path(os.path.expanduser(spec.pretrained)).is_file():
        raise SpecError(
            f"RunSpec field 'pretrained' = {spec.pretrained!r}: no such file (give a local weights file, "
            "'cache' (ImageNet ResNet), 'glyphs' (pre-trained GlyphNet), or null)"
        )
    if not spec.selection_metric.startswith(metric_keys.set_prefix(metric_keys.VALIDATION)):
        raise SpecError(f"RunSpec field 'selection_metric' = {spec.selection_metric!r}: must be a validation metric (val_...)")
    if spec.val_fraction == 0:
        raise SpecError(
            f"RunSpec field 'val_fraction' = 0: model selection ({spec.selection_metric}) needs validation "
            "classes; give a fraction in (0, 0.9)"
        )
    produced = metric_keys.metric_names(spec)
    if spec.selection_metric not in produced:
        raise SpecError(
            f"RunSpec field 'selection_metric' = {spec.selection_metric!r}: dataset {spec.dataset!r} "
            f"reports {', '.join(m for m in produced if m.startswith('val_'))}"
        )
    for name in ("margin", "margin_beta"):
        _at_least(spec, name, 0)
    if spec.embedding_dropout is not None and not 0.0 <= spec.embedding_dropout < 1.0:
        raise SpecError(f"RunSpec field 'embedding_dropout' = {spec.embedding_dropout}: must be in [0, 1) or null (the recipe's)")


def check_against_data(spec: RunSpec, num_train_classes: int, has_groups: bool, world_size: int = 1) -> None:
    """Checks that need the dataset's size and the number of workers; run right after loading
    the data, before any training. Every worker takes whole classes of each step's batch, and
    needs at least 2 of them (positives and negatives)."""
    per_cluster = 2 * world_size
    if spec.plan.divides and spec.num_learners > num_train_classes // per_cluster:
        raise SpecError(
            f"RunSpec field 'num_learners' (K) = {spec.num_learners}: K must be <= training classes / "
            f"(2 x {world_size} worker(s)) = {num_train_classes // per_cluster} (each learner's cluster needs "
            f"2 classes per worker)"
        )
    if GROUPINGS[spec.grouping].needs_groups and not has_groups:
        raise SpecError(f"RunSpec field 'grouping' = {spec.grouping!r}: dataset {spec.dataset!r} carries no group labels")
    classes_per_batch = spec.batch_size // spec.samples_per_class
    if classes_per_batch > num_train_classes:
        raise SpecError(
            f"RunSpec field 'batch_size' = {spec.batch_size}: {classes_per_batch} classes per batch "
            f"but the training split has {num_train_classes}"
        )
    if classes_per_batch < per_cluster:
        raise SpecError(
            f"RunSpec field 'batch_size' = {spec.batch_size} is the global batch: {classes_per_batch} classes of "
            f"m = {spec.samples_per_class} cannot give {world_size} worker(s) 2 classes each; use batch_size >= "
            f"{per_cluster * spec.samples_per_class}"
        )


def field_help() -> dict[str, str]:
    """Field -> 'type = default' (for `dncml train --help-spec`)."""
    out, allowed = {}, choices()
    for name, f in _fields().items():
        base, optional = _field_type(name)
        default = f.default if f.default is not dataclasses.MISSING else None
        out[name] = f"{base.__name__}{' | null' if optional else ''} = {default!r}" + (
            f"  (one of: {', '.join(allowed[name])})" if name in allowed else ""
        )
        if name in RECIPE_SETTINGS["paper"]:
            out[name] += "  null: the recipe's, " + ", ".join(f"{r}: {v[name]!r}" for r, v in RECIPE_SETTINGS.items())
    out["full_embedding_from"] += "  null: the recipe's, paper: never, authors_code: ceil(8/19 x (warmup_epochs + epochs))"
    out["freeze_bn"] += "  auto with a pretrained backbone: all (paper), stats (authors_code)"
    return out
