"""Experiment specs: every shipped spec and preset loads and validates; bad specs fail early."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dncml.experiments.loader import ExperimentError, list_experiments, load_experiment

SHIPPED = ["budget", "fig1_learners", "hierarchy", "hpo", "t_sensitivity", "table3_losses", "table6_grouping"]


def test_all_experiments_are_shipped():
    assert list_experiments() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("preset", ["smoke", "quick", "paper"])
def test_every_preset_validates(name, preset):
    experiment = load_experiment(name, preset)
    assert experiment.preset == preset
    assert experiment.trial_count >= 1
    assert experiment.metric.startswith("val_")
    for point in experiment.grid_points():
        spec = experiment.run_spec(point)  # every grid point is a valid RunSpec
        if preset == "paper":
            assert spec.backbone == "resnet50" and spec.dataset != "glyphs"
            assert spec.recipe == "authors_code"  # the procedure behind the paper's numbers
        else:
            assert spec.dataset == "glyphs" and spec.recipe == "paper"


@pytest.mark.parametrize("name", ["table6_grouping", "budget"])
@pytest.mark.parametrize("preset", ["sop_shaped", "sop_shaped_authors"])
def test_the_sop_shaped_presets(name, preset):
    experiment = load_experiment(name, preset)
    specs = [experiment.run_spec(point) for point in experiment.grid_points()]
    assert {s.dataset for s in specs} == {"glyph_families"} and {s.pretrained for s in specs} == {"glyphs"}
    assert {s.recipe for s in specs} == {"authors_code" if preset.endswith("authors") else "paper"}
    assert max(s.total_epochs for s in specs) >= 12  # 1,000+ steps per learner at K = 8 (700 steps an epoch)


def test_table6_has_the_papers_five_rows():
    experiment = load_experiment("table6_grouping", "quick")
    assert experiment.grid["grouping"] == ["none", "random", "gt_labels", "kmeans_nosplit", "kmeans"]
    assert len(experiment.grid["seed"]) >= 3
    assert experiment.run["num_learners"] == 8 and experiment.run["loss"] == "margin"
    assert set(experiment.table["paper"]) == set(experiment.grid["grouping"])
    # a fair comparison: every row starts from the same warm-up and gets the same steps
    specs = [experiment.run_spec(point) for point in experiment.grid_points()]
    assert len({(s.warmup_epochs, s.epochs, s.finetune_epochs, s.steps_per_epoch, s.batch_size) for s in specs}) == 1
    # the paper's regime: the first division clusters the pretrained backbone's embedding
    assert specs[0].pretrained == "glyphs" and specs[0].warmup_epochs == 0 and specs[0].finetune_epochs >= 1


def _write(tmp_path: Path, card: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


BASE = str(Path(__file__).resolve().parents[1] / "experiments" / "runs" / "glyphs_smoke.yaml")


@pytest.mark.parametrize(
    "card, message",
    [
        ({"name": "x", "base": BASE, "grid": {"K": [4, 7]}}, "grid point num_learners=7"),
        ({"name": "x", "base": BASE, "grid": {"grouping": ["kmeans", "clever"]}}, "allowed values are none, kmeans"),
        ({"name": "x", "base": BASE, "grid": {"nonsense": [1]}}, "unknown RunSpec field 'nonsense'"),
        ({"name": "x", "base": BASE, "metric": "test_recall@1"}, "select on a validation metric"),
        ({"name": "x", "base": BASE, "grid": {"seed": [0]}, "search": {"lr": {"loguniform": [1e-4, 1e-2]}}}, "either grid axes"),
        ({"name": "x", "base": BASE, "search": {"lr": {"normal": [0, 1]}}}, "write one of uniform"),
        ({"name": "x", "base": BASE, "search": {"lr": {"loguniform": [0, 1]}}}, "low > 0"),
        ({"name": "x", "base": BASE, "mode": "sideways"}, "allowed values are max, min"),
        ({"name": "x", "base": "missing.yaml"}, "base run 'missing.yaml' not found"),
        ({"name": "x", "base": BASE, "resources": {"gpus": 1}}, "resources: unknown key(s) gpus"),
        ({"name": "x", "base": BASE, "colour": "blue"}, "unknown key(s) colour"),
    ],
)
def test_bad_specs_fail_with_a_clear_message(tmp_path, card, message):
    with pytest.raises(ExperimentError) as error:
        load_experiment(_write(tmp_path, card))
    assert message in str(error.value)


def _search(distribution: dict, field: str = "lr") -> dict:
    return {"name": "x", "base": BASE, "search": {field: distribution}}


# The base run (glyphs_smoke): d = 64, K = 4, m = 4, batch 32, 1 + 2 + 1 = 4 epochs.
@pytest.mark.parametrize(
    "card, message",
    [
        # search spaces
        (_search({"choice": []}, "K"), "search.num_learners: choice needs a non-empty list"),
        (_search({"choice": [[1, 2]]}, "K"), "search.num_learners: choice value [1, 2]"),
        (_search({"quniform": [0.1, 0.5, 0]}), "search.lr: quniform's q must be in (0, high - low]"),
        (_search({"quniform": [0.1, 0.5, -0.1]}), "search.lr: quniform's q"),
        (_search({"quniform": [0.1, 0.5, 0.1, 2]}), "search.lr: quniform needs [low, high] or [low, high, q]"),
        (_search({"uniform": [0.5, 0.5]}), "search.lr: uniform needs [low, high] with low < high"),
        (_search({"loguniform": [1e-2, 1e-4]}), "search.lr: loguniform needs [low, high] with low < high"),
        (_search({"quniform": [0.5, 0.1, 0.1]}), "search.lr: quniform needs [low, high] with low < high"),
        (_search({"randint": [8, 2]}, "K"), "search.num_learners: randint needs [low, high] with low < high"),
        (_search({"uniform": [0.1, float("nan")]}), "search.lr: uniform needs [low, high] of finite numbers"),
        (_search({"uniform": ["a", "b"]}), "search.lr: uniform needs [low, high] of finite numbers"),
        (_search({"uniform": [1, 8]}, "K"), "search.num_learners: 'num_learners' is an integer field and uniform"),
        (_search({"loguniform": [1, 8]}, "T"), "search.recluster_every: 'recluster_every' is an integer field"),
        (_search({"quniform": [2, 8, 0.5]}, "m"), "search.samples_per_class: 'samples_per_class' is an integer field"),
        (_search({"quniform": [16.5, 64, 16]}, "d"), "use randint [low, high], choice of integers, or quniform"),
        (_search({"randint": [1.5, 8]}, "K"), "search.num_learners: randint needs integer bounds"),
        (_search({"uniform": [0, 1]}, "grouping"), "search.grouping: uniform samples numbers, and 'grouping' is a str field"),
        (_search({"choice": [4, 7]}, "K"), "search.num_learners: choice value 7: RunSpec field 'num_learners' (K) = 7"),
        (
            {"name": "x", "base": BASE, "run": {"d": 128}, "search": {"K": {"choice": [4, 7]}}},
            "search.num_learners: choice value 7: RunSpec field 'num_learners' (K) = 7: K must divide the embedding size "
            "embedding_dim (d) = 128; allowed K: 1, 2, 4, 8, 16, 32, 64, 128",
        ),
        (_search({"choice": ["kmeans", "clever"]}, "grouping"), "search.grouping: choice value 'clever'"),
        (_search({"choice": [2.5]}, "m"), "search.samples_per_class: choice value 2.5: RunSpec field 'samples_per_class' must be int"),
        (_search({"randint": [2, 7]}, "K"), "search.num_learners: randint high 7: RunSpec field 'num_learners' (K) = 7"),
        (_search({"quniform": [3, 64, 61]}, "d"), "search.embedding_dim: quniform low 3"),
        (_search({"uniform": [0.1, 0.95]}, "val_fraction"), "search.val_fraction: uniform high 0.95"),
        (_search({"loguniform": [1e-4, 1e-2]}, "nonsense"), "search: unknown RunSpec field 'nonsense'"),
        # resources
        ({"name": "x", "base": BASE, "resources": {"num_workers": 0}}, "resources.num_workers = 0: must be an integer >= 1"),
        ({"name": "x", "base": BASE, "resources": {"num_workers": 1.5}}, "resources.num_workers = 1.5"),
        ({"name": "x", "base": BASE, "resources": {"num_workers": "2"}}, "resources.num_workers = '2'"),
        ({"name": "x", "base": BASE, "resources": {"cpus_per_worker": 0}}, "resources.cpus_per_worker = 0: must be a finite number > 0"),
        ({"name": "x", "base": BASE, "resources": {"cpus_per_worker": float("nan")}}, "resources.cpus_per_worker = nan"),
        ({"name": "x", "base": BASE, "resources": {"cpus_per_worker": "1"}}, "resources.cpus_per_worker = '1'"),
        (
            {"name": "x", "base": BASE, "resources": {"gpus_per_worker": -1, "use_gpu": True}},
            "resources.gpus_per_worker = -1: must be a finite number >= 0",
        ),
        ({"name": "x", "base": BASE, "resources": {"actor_gpus": float("inf")}}, "resources.actor_gpus = inf: must be a finite"),
        ({"name": "x", "base": BASE, "resources": {"use_gpu": "yes"}}, "resources.use_gpu = 'yes': must be true or false"),
        (
            {"name": "x", "base": BASE, "resources": {"gpus_per_worker": 1}},
            "resources.gpus_per_worker = 1: the workers get GPUs only with use_gpu: true",
        ),
        ({"name": "x", "base": BASE, "resources": [1]}, "resources: expected a mapping"),
        # metric
        ({"name": "x", "base": BASE, "metric": "val_recall@3"}, "metric 'val_recall@3': not reported by the base run"),
        (
            {"name": "x", "base": BASE, "metric": "val_nmi"},
            "metric 'val_nmi' differs from the selection_metric 'val_recall@1' of the base run",
        ),
        ({"name": "x", "base": BASE, "metric": "val_nmi"}, "set `selection_metric: val_nmi` in run:"),
        (
            {
                "name": "x",
                "base": BASE,
                "metric": "val_nmi",
                "run": {"selection_metric": "val_nmi"},
                "grid": {"selection_metric": ["val_nmi", "val_map@r"]},
            },
            "of grid point selection_metric=val_map@r",
        ),
        # asha
        ({"name": "x", "base": BASE, "asha": {"max_t": 10}}, "asha.max_t: not set here: ASHA's max_t is the run's total epochs"),
        ({"name": "x", "base": BASE, "asha": {"grace": 1}}, "asha: unknown key(s) grace; allowed: grace_period, reduction_factor"),
        ({"name": "x", "base": BASE, "asha": {"grace_period": 0}}, "asha.grace_period = 0: must be an integer >= 1"),
        ({"name": "x", "base": BASE, "asha": {"grace_period": 1.5}}, "asha.grace_period = 1.5"),
        ({"name": "x", "base": BASE, "asha": {"grace_period": 5}}, "asha.grace_period = 5: must be <= the run's total epochs"),
        ({"name": "x", "base": BASE, "asha": {"reduction_factor": 1}}, "asha.reduction_factor = 1: must be a number > 1"),
        ({"name": "x", "base": BASE, "asha": 3}, "asha: a mapping"),
        # num_samples, max_concurrent
        ({"name": "x", "base": BASE, "num_samples": 2.5}, "num_samples = 2.5: must be an integer >= 1"),
        ({"name": "x", "base": BASE, "num_samples": "3"}, "num_samples = '3'"),
        ({"name": "x", "base": BASE, "num_samples": 0}, "num_samples = 0"),
        ({"name": "x", "base": BASE, "max_concurrent": 0}, "max_concurrent = 0: must be an integer >= 1, or null"),
        ({"name": "x", "base": BASE, "max_concurrent": 1.5}, "max_concurrent = 1.5"),
        # rows and the table's baseline
        (
            {"name": "x", "base": BASE, "grid": {"grouping": ["none", "kmeans"]}, "rows": ["nonsense"]},
            "rows: unknown RunSpec field 'nonsense'",
        ),
        (
            {
                "name": "x",
                "base": BASE,
                "grid": {"method": [{"grouping": "none", "K": 1}, {"grouping": "kmeans", "K": 4}]},
                "rows": "method",
            },
            "rows: 'method' is a linked grid axis; name the RunSpec fields it varies instead: grouping, num_learners",
        ),
        (
            {"name": "x", "base": BASE, "grid": {"grouping": ["random", "kmeans"]}, "rows": "grouping", "table": {"baseline": "none"}},
            "table.baseline 'none': no grid point has grouping=none; the grid has: grouping=random; grouping=kmeans",
        ),
        (
            {
                "name": "x",
                "base": BASE,
                "grid": {"grouping": ["none", "kmeans"]},
                "rows": "grouping",
                "table": {"baseline": {"loss": "margin"}},
            },
            "table.baseline {'loss': 'margin'}: 'loss' is not a row field; rows: grouping",
        ),
        (
            {
                "name": "x",
                "base": BASE,
                "grid": {"method": [{"grouping": "none", "K": 1}, {"grouping": "kmeans", "K": 4}]},
                "table": {"baseline": {"grouping": "none", "K": 4}},
            },
            "no grid point has grouping=none, num_learners=4",
        ),
        (
            {
                "name": "x",
                "base": BASE,
                "grid": {"loss": ["margin", "triplet"], "grouping": ["none", "kmeans"]},
                "table": {"baseline": ["none"]},
            },
            "table.baseline ['none']: a list gives one value per row field (loss, grouping)",
        ),
        (
            {"name": "x", "base": BASE, "grid": {"K": [1, 4]}, "table": {"baseline": "one"}},
            "table.baseline 'one': RunSpec field 'num_learners' must be int",
        ),
        # names: a folder of the results store
        ({"name": "../escape", "base": BASE}, "name '../escape': it names a folder, so it must match"),
        ({"name": "a/b", "base": BASE}, "name 'a/b'"),
        ({"name": ".hidden", "base": BASE}, "name '.hidden'"),
        ({"name": "a..b", "base": BASE}, "name 'a..b'"),
        ({"name": "a/b", "run": {"epochs": 1}}, "name 'a/b': it names a folder"),  # also the run's name: named as the experiment's
        ({"name": "n" * 101, "base": BASE}, "at most 100 characters"),
        ({"name": "x", "base": BASE, "run": {"name": "../run"}}, "'../run'"),
        ({"name": "x", "base": BASE, "run": {"name": "r" * 101}}, f"run name '{'r' * 101}' (the base run)"),
        ({"name": "x", "base": BASE, "grid": {"name": ["a", "b/c"]}}, "grid point name=b/c"),
        # the base run itself (a sweep prepares its data and sizes ASHA from it)
        ({"name": "x", "base": BASE, "run": {"K": 7}, "grid": {"K": [4, 8]}}, "the base run: RunSpec field 'num_learners' (K) = 7"),
    ],
)
def test_every_spec_mistake_fails_at_load_naming_the_key(tmp_path, card, message):
    with pytest.raises(ExperimentError) as error:
        load_experiment(_write(tmp_path, card))
    assert message in str(error.value)
    assert str(tmp_path / "spec.yaml") in str(error.value)


@pytest.mark.parametrize(
    "card",
    [
        _search({"randint": [1, 4]}, "K"),  # interior K = 3 is refused per trial (sample_is_valid), corners are valid
        _search({"quniform": [32, 64, 32]}, "d"),  # integer low, high and q: integral samples
        _search({"quniform": [0.1, 0.5, 0.1]}),
        _search({"quniform": [1, 8]}, "T"),  # q defaults to 1
        _search({"choice": [2, 4.0]}, "K"),
        {"name": "x", "base": BASE, "metric": "val_nmi", "run": {"selection_metric": "val_nmi"}},
        {"name": "x", "base": BASE, "asha": None},
        {"name": "x", "base": BASE, "asha": {"grace_period": 4, "reduction_factor": 3}, "num_samples": 2, "max_concurrent": None},
        {
            "name": "x",
            "base": BASE,
            "resources": {"num_workers": 2, "cpus_per_worker": 2, "use_gpu": True, "gpus_per_worker": 0.5, "actor_gpus": 0.25},
        },
        {
            "name": "x",
            "base": BASE,
            "grid": {"method": [{"grouping": "none", "K": 1}, {"grouping": "kmeans", "K": 4}], "seed": [0]},
            "rows": ["grouping", "K"],
            "table": {"baseline": {"grouping": "none", "K": 1}},
        },
        {
            "name": "x",
            "base": BASE,
            "grid": {"loss": ["margin", "triplet"], "grouping": ["none", "kmeans"]},
            "table": {"baseline": "margin,none"},
        },
        {"name": "x", "base": BASE, "grid": {"K": [1, 4]}, "rows": "K", "table": {"baseline": 1}},
        {"name": "Run-1.v2_a", "base": BASE},
    ],
)
def test_good_specs_load(tmp_path, card):
    assert load_experiment(_write(tmp_path, card)).trial_count >= 1


def test_a_preset_may_leave_the_baseline_row_out(tmp_path):
    """The baseline is checked against the grid the table is written for: hierarchy's smoke
    preset runs training_pass only (no baseline row, no Δ), and still loads."""
    assert load_experiment("hierarchy", "smoke").grid["embedding_source"] == ["training_pass"]
    card = {
        "name": "x",
        "base": BASE,
        "grid": {"grouping": ["none", "kmeans"]},
        "table": {"baseline": "none"},
        "presets": {"smoke": {"grid": {"grouping": ["random", "kmeans"]}}},
    }
    assert load_experiment(_write(tmp_path, card), "smoke").grid["grouping"] == ["random", "kmeans"]
    card["table"]["baseline"] = "gt_labels"  # in neither grid: a mistake
    with pytest.raises(ExperimentError, match="table.baseline 'gt_labels': no grid point has grouping=gt_labels"):
        load_experiment(_write(tmp_path, card), "smoke")


def test_unknown_preset_and_experiment():
    with pytest.raises(ExperimentError, match="unknown preset 'huge'; this experiment has: smoke, quick, paper"):
        load_experiment("table6_grouping", "huge")
    with pytest.raises(ExperimentError, match="unknown experiment 'table7'"):
        load_experiment("table7")


def test_preset_layers_override_the_base(tmp_path):
    card = {
        "name": "layers",
        "base": BASE,
        "run": {"lr": 0.5},
        "grid": {"seed": [0, 1]},
        "presets": {"smoke": {"run": {"lr": 0.25}, "grid": {"seed": [3]}}},
    }
    path = _write(tmp_path, card)
    smoke = load_experiment(path, "smoke")
    assert smoke.run["lr"] == 0.25 and smoke.grid == {"seed": [3]}
    assert smoke.run["glyph_classes"] == 96  # from the base run file
    assert load_experiment(path).run["lr"] == 0.5  # no quick preset here: no layer


def test_setting_labels_name_the_row_not_the_seed():
    experiment = load_experiment("table3_losses", "quick")
    assert experiment.rows == ["loss", "grouping"]
    assert experiment.setting_label({"loss": "triplet", "grouping": "kmeans", "seed": 0}) == "loss=triplet,grouping=kmeans"


def test_linked_axis_varies_fields_together():
    """A grid axis whose values are mappings varies several RunSpec fields together (the budget
    experiment's baseline is K = 1, its divide-and-conquer rows K = 4 and 8): no product of
    grouping x K, each point flattened into RunSpec overrides, rows named by the fields."""
    experiment = load_experiment("budget", "quick")
    points = experiment.grid_points()
    assert len(points) == 3 * 4 * 3 == experiment.trial_count
    assert {(p["grouping"], p["num_learners"]) for p in points} == {("none", 1), ("kmeans", 4), ("kmeans", 8)}
    spec = experiment.run_spec({"method": {"grouping": "kmeans", "num_learners": 8}, "epochs": 3, "seed": 1})
    assert (spec.grouping, spec.num_learners, spec.epochs, spec.seed) == ("kmeans", 8, 3, 1)
    assert (
        experiment.setting_label({"method": {"grouping": "none", "num_learners": 1}, "epochs": 7})
        == "grouping=none,num_learners=1,epochs=7"
    )
    assert spec.pretrained == "glyphs" and spec.resolved_freeze_bn == "all"


def test_the_card_carries_what_analysis_reads_and_is_json():
    import json

    experiment = load_experiment("table6_grouping", "quick")
    card = json.loads(json.dumps(experiment.card("table6_grouping-quick-x")))
    assert card["experiment"] == "table6_grouping" and card["sweep"] == "table6_grouping-quick-x"
    assert card["rows"] == ["grouping"] and card["aliases"]["K"] == "num_learners"
    assert card["base_run"]["num_learners"] == 8 and card["table"]["baseline"] == "none"


def test_sweep_set_overrides_run_fields_and_grid_axes():
    """`dncml sweep --set run.FIELD=VALUE --set grid.AXIS=[...]`, over the preset."""
    experiment = load_experiment("table6_grouping", "smoke", ["run.K=2", "grid.seed=[0, 1, 2]", "lr=0.002"])
    assert experiment.run["num_learners"] == 2 and experiment.run["lr"] == 0.002
    assert experiment.grid["seed"] == [0, 1, 2]
    assert experiment.trial_count == 3 * load_experiment("table6_grouping", "smoke").trial_count // len(
        load_experiment("table6_grouping", "smoke").grid["seed"]
    )
    with pytest.raises(ExperimentError, match=r"--set 'runs\.K=2': 'runs' is neither run nor grid"):
        load_experiment("table6_grouping", "smoke", ["runs.K=2"])
    with pytest.raises(ExperimentError, match=r"--set 'run\.KK=2': .*KK"):
        load_experiment("table6_grouping", "smoke", ["run.KK=2"])
    with pytest.raises(ExperimentError, match=r"grid point .*num_learners=7"):
        load_experiment("fig1_learners", "smoke", ["grid.num_learners=[2, 7]"])


def test_search_labels_name_what_each_trial_sampled():
    experiment = load_experiment("hpo", "smoke")
    label = experiment.setting_label({"lr": 0.000312345, "num_learners": 4, "seed": 0})
    assert "lr=0.000312" in label and "num_learners=4" in label and "seed" not in label
