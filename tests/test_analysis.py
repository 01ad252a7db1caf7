"""analysis/: the results store read back as tables, plots and notebooks. Every test builds a
small synthetic store (Parquet files and experiment cards laid out as `dncml sweep` writes them)
in tmp_path; nothing here trains, starts Ray or imports torch."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from dncml.analysis import schema
from dncml.analysis.plots import KINDS, budget_summary, experiment_figure, optuna_paths, plot_experiment
from dncml.analysis.store import StoreError, list_experiments, load_experiment, load_study, locate_store
from dncml.analysis.tables import experiment_table, paper_comparison, render_table
from dncml.analysis.vocabulary import row_fields, row_label, short_name

PNG = b"\x89PNG\r\n\x1a\n"
T975_1 = 12.706204736  # scipy.stats.t.ppf(0.975, 1): the 95 % interval's half-width factor with 2 pairs
SWEEP_T6 = "table6_grouping-quick-20260101-120000"

# grouping -> best_test_recall@1 per seed (None: that seed failed); hand-computed statistics below.
T6_RECALL = {"none": [0.50, 0.52, 0.54], "random": [0.55, 0.57, 0.59], "kmeans": [0.60, 0.64, None]}
T6_CLUSTER = {"none": [0.0, 0.0, 0.0], "random": [1.0, 2.0, 3.0], "kmeans": [4.0, 6.0, None]}


def t6_card(**table) -> dict:
    return {
        "experiment": "table6_grouping",
        "preset": "quick",
        "sweep": SWEEP_T6,
        "description": "test",
        "rows": ["grouping"],
        "metric": "val_recall@1",
        "mode": "max",
        "grid": {"grouping": ["none", "random", "kmeans"], "seed": [0, 1, 2]},
        "search": {},
        "num_samples": 1,
        "table": {
            "baseline": "none",
            "order": ["none", "kmeans", "random"],
            "labels": {"none": "baseline (no division)", "kmeans": "K-means (full method)"},
            "metrics": ["test_recall@1", "test_nmi", "cluster_seconds"],
            "paper_dataset": "Stanford Online Products",
            "paper": {"none": {"R@1": 72.7, "R@10": 86.2}, "kmeans": {"R@1": 75.9, "R@10": 88.4}},
            **table,
        },
        "plot": {"kind": "curves", "hue": "grouping"},
        "base_run": {"num_learners": 4},
    }


def _write(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([row]), path)


def write_sweep(root: Path, card: dict, trials: list[dict], epochs: list[dict] = ()) -> Path:
    """A sweep directory as `dncml sweep` leaves it: the card, one file per trial and per epoch."""
    directory = root / card["sweep"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / schema.CARD_FILE).write_text(json.dumps(card))
    for trial in trials:
        _write(directory / schema.TRIALS_DIR / schema.trial_file(trial["trial_id"]), {"sweep": card["sweep"], **trial})
    for epoch in epochs:
        _write(directory / schema.EPOCHS_DIR / schema.epoch_file(epoch["trial_id"], epoch["epoch"]), {"sweep": card["sweep"], **epoch})
    return directory


def trial(trial_id: str, status: str = schema.COMPLETED, error: str | None = None, **fields) -> dict:
    row = {
        "trial_id": trial_id,
        "experiment": fields.pop("experiment", "table6_grouping"),
        "status": status,
        "error": error,
        "spec_dataset": "glyphs",
        "wall_seconds": 10.0,
        "ended_at": f"2026-01-01T12:{trial_id[-2:]}:00",
    }
    row.update(fields)
    return row


def epoch_rows(trial_id: str, grouping: str, seed: int, epochs: int = 4, every_eval: bool = False) -> list[dict]:
    """warmup, divide x (epochs - 2), conquer; the baseline's middle epochs are 'baseline'. The
    test metrics on the last epoch only (`test_eval: selected`, the default), unless every_eval."""
    rows = []
    for e in range(epochs):
        phase = "warmup" if e == 0 else "conquer" if e == epochs - 1 else "divide"
        if grouping == "none" and e > 0:
            phase = "baseline"
        divides = phase == "divide"
        rows.append(
            {
                "trial_id": trial_id,
                "epoch": e,
                "phase": phase,
                "active_learners": 4 if divides else 1,
                "loss": 1.0 / (e + 1),
                "reclustered": True if divides else None,
                "cluster_sizes": json.dumps([40 + seed, 30, 20, 10 - seed]) if divides else None,
                "cluster_classes": json.dumps([4, 3, 2, 1 + (grouping == "random")]) if divides else None,
                "class_purity": {"random": 0.3, "kmeans": 0.8}.get(grouping, 1.0) + 0.05 * (e - 1) if divides else None,
                "group_purity": {"random": 0.4, "kmeans": 0.7}.get(grouping, 1.0) if divides else None,
                "cluster_changed": 0.1 * seed if divides and e > 1 else None,
                "val_recall@1": 0.4 + 0.05 * e + 0.01 * seed,
                "best_epoch": e,  # val R@1 rises every epoch: each is the best so far
                "test_recall@1": 0.35 + 0.05 * e if every_eval or e == epochs - 1 else None,
            }
        )
    return rows


@pytest.fixture()
def t6_store(tmp_path) -> Path:
    root = tmp_path / "store"
    trials, epochs = [], []
    for g, grouping in enumerate(T6_RECALL):
        for seed, (recall, cluster) in enumerate(zip(T6_RECALL[grouping], T6_CLUSTER[grouping])):
            trial_id = f"t6_{g}{seed}"
            if recall is None:
                trials.append(
                    trial(
                        trial_id,
                        "failed",
                        error="Traceback ...\nRuntimeError: out of memory",
                        setting=f"grouping={grouping}",
                        spec_grouping=grouping,
                        spec_seed=seed,
                    )
                )
                continue
            trials.append(
                trial(
                    trial_id,
                    setting=f"grouping={grouping}",
                    spec_grouping=grouping,
                    spec_seed=seed,
                    spec_num_learners=4,
                    cluster_seconds=cluster,
                    **{
                        "best_test_recall@1": recall,
                        "best_test_nmi": 0.3 + recall / 10,
                        "best_val_recall@1": recall + 0.1,
                        "final_test_recall@1": recall - 0.01,
                    },
                )
            )
            epochs += epoch_rows(trial_id, grouping, seed)
    write_sweep(root, t6_card(), trials, epochs)
    (root / "_ray" / SWEEP_T6).mkdir(parents=True)  # Ray's own files: never read
    return root


# ------------------------------------------------------------------------------------ tables
def test_table_statistics_against_hand_values(t6_store):
    data = load_experiment(t6_store, "table6_grouping")
    assert data.sweeps == [SWEEP_T6] and len(data.trials) == 9 and len(data.epochs) == 8 * 4
    table = experiment_table(data)
    assert table.loc["none", "test_recall@1 mean"] == pytest.approx(0.52)
    assert table.loc["none", "test_recall@1 std"] == pytest.approx(0.02)
    assert table.loc["random", "test_recall@1 mean"] == pytest.approx(0.57)
    assert table.loc["kmeans", "test_recall@1 mean"] == pytest.approx(0.62)
    assert table.loc["kmeans", "test_recall@1 std"] == pytest.approx(math.sqrt(2 * 0.02**2))
    assert table.loc["kmeans", "test_recall@1 n"] == 2 and table.loc["none", "test_recall@1 n"] == 3
    assert table.loc["kmeans", "trials"] == 2  # the failed seed is not counted
    assert table.loc["random", "cluster_seconds mean"] == pytest.approx(2.0)
    assert table.loc["random", "cluster_seconds std"] == pytest.approx(1.0)
    assert table.attrs["metrics"] == ["test_recall@1", "test_nmi", "cluster_seconds"]


def test_table_order_labels_baseline_best_and_paper(t6_store):
    table = experiment_table(load_experiment(t6_store, "table6_grouping"))
    assert table.index.tolist() == ["none", "kmeans", "random"]  # the card's order
    assert table["label"].tolist() == ["baseline (no division)", "K-means (full method)", "random"]  # unlabelled: value
    # Paired by seed: kmeans' seed 2 failed, so it pairs seeds 0 and 1 (+0.10, +0.12) with the
    # baseline: +0.11, not the +0.10 of the two means; its interval spans 0 (within noise).
    assert table.loc["kmeans", "test_recall@1 delta"] == pytest.approx(0.11)
    assert table.loc["kmeans", "test_recall@1 delta n"] == 2
    half = T975_1 * math.sqrt(2 * 0.01**2) / math.sqrt(2)
    assert table.loc["kmeans", "test_recall@1 delta low"] == pytest.approx(0.11 - half)
    assert table.loc["kmeans", "test_recall@1 delta high"] == pytest.approx(0.11 + half)
    assert table.loc["kmeans", "test_recall@1 delta noise"]
    assert table.loc["random", "test_recall@1 delta"] == pytest.approx(0.05)  # +0.05 on every seed: no spread
    assert table.loc["random", "test_recall@1 delta n"] == 3
    assert table.loc["random", "test_recall@1 delta low"] == pytest.approx(0.05)
    assert not table.loc["random", "test_recall@1 delta noise"]
    assert table.loc["none", "test_recall@1 delta"] == 0.0
    assert table["test_recall@1 best"].tolist() == [False, True, False]  # max
    assert table["cluster_seconds best"].tolist() == [True, False, False]  # seconds: min
    assert table.loc["kmeans", "paper R@1"] == 75.9 and table.loc["none", "paper R@10"] == 86.2
    assert math.isnan(table.loc["random", "paper R@1"])
    comparison = paper_comparison(load_experiment(t6_store, "table6_grouping"))
    assert comparison.loc["kmeans", "ours"] == pytest.approx(62.0)
    assert comparison.loc["kmeans", "ours Δ"] == pytest.approx(11.0)
    assert comparison.loc["kmeans", "ours Δ low"] == pytest.approx(100 * (0.11 - half))
    assert comparison.loc["kmeans", "ours Δ high"] == pytest.approx(100 * (0.11 + half))
    assert comparison.loc["kmeans", "ours Δ n"] == 2
    assert comparison.loc["kmeans", "paper Δ"] == pytest.approx(3.2)


def test_explicit_metrics_and_orders_without_card_order(t6_store):
    card = t6_card()
    del card["table"]["order"]
    write_sweep(
        t6_store,
        {**card, "sweep": "table6_grouping-quick-20260102-000000"},
        [
            trial("x1", spec_grouping="kmeans", spec_seed=0, **{"best_test_recall@1": 0.7}),
            trial("x2", spec_grouping="none", spec_seed=0, **{"best_test_recall@1": 0.6}),
        ],
    )
    table = experiment_table(load_experiment(t6_store, "table6_grouping"), metrics=["test_recall@1"])
    assert table.index.tolist() == ["none", "kmeans"]  # the grid's order
    assert [c for c in table.columns if c.startswith("test_")] == [
        "test_recall@1 mean",
        "test_recall@1 std",
        "test_recall@1 n",
        "test_recall@1 delta",
        "test_recall@1 delta low",
        "test_recall@1 delta high",
        "test_recall@1 delta n",
        "test_recall@1 delta noise",
        "test_recall@1 best",
    ]


def test_multi_field_rows_compare_within_their_group(tmp_path):
    card = {
        "experiment": "table3_losses",
        "preset": "smoke",
        "sweep": "table3_losses-smoke-20260101-000000",
        "rows": ["loss", "grouping"],
        "metric": "val_recall@1",
        "mode": "max",
        "grid": {"loss": ["triplet", "margin"], "grouping": ["none", "kmeans"], "seed": [0]},
        "table": {
            "baseline": {"grouping": "none"},
            "metrics": ["test_recall@1"],
            "paper": {"triplet,kmeans": {"R@1": 55.4}, "margin,none": {"R@1": 63.6}},
        },
        "plot": {"kind": "bars", "hue": "grouping", "x": "loss"},
    }
    values = {("triplet", "none"): 0.40, ("triplet", "kmeans"): 0.45, ("margin", "none"): 0.50, ("margin", "kmeans"): 0.58}
    write_sweep(
        tmp_path,
        card,
        [
            trial(f"b{i}", experiment="table3_losses", spec_loss=loss, spec_grouping=grouping, spec_seed=0, **{"best_test_recall@1": v})
            for i, ((loss, grouping), v) in enumerate(values.items())
        ],
    )
    table = experiment_table(load_experiment(tmp_path, "table3_losses"))
    assert table.index.tolist() == ["triplet,none", "triplet,kmeans", "margin,none", "margin,kmeans"]
    assert table.loc["triplet,kmeans", "test_recall@1 delta"] == pytest.approx(0.05)
    assert table.loc["margin,kmeans", "test_recall@1 delta"] == pytest.approx(0.08)
    assert table.loc["margin,kmeans", "test_recall@1 delta n"] == 1  # one seed: no interval
    assert math.isnan(table.loc["margin,kmeans", "test_recall@1 delta low"])
    assert table.loc["margin,kmeans", "test_recall@1 delta noise"]
    assert "+8.0 (n=1, no interval)" in render_table(tmp_path, "table3_losses")
    assert table.loc["triplet,kmeans", "paper R@1"] == 55.4
    assert table.loc["margin,kmeans", "label"] == "margin, kmeans"
    png = plot_experiment(tmp_path, "table3_losses", tmp_path / "bars.png")
    assert png.read_bytes()[:8] == PNG


def test_render_formats(t6_store):
    md = render_table(t6_store, "table6_grouping", fmt="md")
    caption, _, body = md.partition("\n\n")
    assert "table6_grouping" in caption and "preset quick" in caption and "glyphs" in caption
    assert "8 completed trials" in caption and "1 failed" in caption and "in %" in caption
    lines = body.strip().splitlines()
    assert len(lines) == 2 + 3  # header, separator, one line per row
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    # the paper's R@1 beside our R@1 (its R@10 matches no metric shown: left out)
    assert header == ["setting", "R@1", "paper R@1", "NMI", "cluster s", "Δ R@1"]
    assert set(lines[1]) <= set("|-: ")
    rows = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert list(rows) == ["baseline (no division)", "K-means (full method)", "random"]
    kmeans = rows["K-means (full method)"]
    assert "**62.0 ± 2.8 (n=2)**" in kmeans and "75.9" in kmeans  # best R@1, bold, in %; n only where short
    assert " +11.0 [-1.7, +23.7] ≈ |" in kmeans  # paired over 2 seeds; the interval spans 0: within noise
    none_line = rows["baseline (no division)"]
    assert " 52.0 ± 2.0 |" in none_line and " baseline |" in none_line and "72.7" in none_line
    assert "**0.00 ± 0.00**" in none_line and "(n=3)" not in md  # cluster seconds: the minimum is best
    assert "Each cell over 3 trials unless marked (n=...)" in caption
    assert " +5.0 [+5.0, +5.0] |" in rows["random"] and "**" not in rows["random"]  # no ≈: the interval excludes 0
    assert "paired by seed: mean [95 % t-interval] over 2-3 seeds, in points; ≈: the interval spans 0" in caption

    latex = render_table(t6_store, "table6_grouping", fmt="latex")
    assert latex.startswith("% dncml ") and "% sweeps: " + SWEEP_T6.replace("_", "_") in latex  # provenance
    assert r"\toprule" in latex and r"\midrule" in latex and r"\bottomrule" in latex and r"\label{tab:table6_grouping}" in latex
    assert r"\caption[table6\_grouping: R@1, NMI, cluster s by grouping]{table6\_grouping (preset quick" in latex
    assert r"\textbf{62.0 $\pm$ 2.8 (n=2)}" in latex and r"+11.0 [-1.7, +23.7] $\approx$ \\" in latex and "≈" not in latex
    html = render_table(t6_store, "table6_grouping", fmt="html")
    assert html.startswith("<!-- dncml ") and "<caption>table6_grouping (preset quick" in html and html.count("<tr>") == 4
    assert ">+11.0 [-1.7, +23.7] ≈</td>" in html and "font-weight: bold" in html
    csv_text = render_table(t6_store, "table6_grouping", fmt="csv")
    assert csv_text.startswith("row,label,grouping,trials,")  # no caption line: read_csv reads it as is
    frame = pd.read_csv(__import__("io").StringIO(csv_text), index_col=0)
    assert frame.loc["kmeans", "test_recall@1 mean"] == pytest.approx(0.62)
    assert frame.loc["kmeans", "paper R@1"] == pytest.approx(0.759)  # one unit throughout: fractions
    for name in ("test_recall@1", "test_nmi", "cluster_seconds"):  # every metric's Δ, unrounded
        assert {f"{name} delta{s}" for s in ("", " low", " high", " n", " noise")} <= set(frame.columns)
    assert frame.loc["kmeans", "test_recall@1 delta"] == pytest.approx(0.11)
    one = render_table(t6_store, "table6_grouping", metrics=["test_nmi"])
    header = [c.strip() for c in one.splitlines()[2].strip("|").split("|")]
    assert header == ["setting", "NMI", "Δ NMI"]  # no paper column matches NMI
    with pytest.raises(StoreError, match="format"):
        render_table(t6_store, "table6_grouping", fmt="xlsx")


def test_labels_are_escaped_and_csv_cells_cannot_run_as_formulas(tmp_path):
    """A label from the card is text in every format: HTML in it is not rendered by the Markdown
    (which Jupyter shows) nor by the HTML table, and a CSV cell a spreadsheet would run as a
    formula starts with a quote; numbers (negative ones too) stay numbers."""
    card = t6_card(labels={"none": "<img src=x onerror=alert(1)>", "kmeans": '=HYPERLINK("http://x")', "random": "@SUM(A1)"})
    trials = [
        trial(f"e{g}{seed}", spec_grouping=grouping, spec_seed=seed, **{"best_test_recall@1": 0.5 + g / 10 + seed / 100})
        for g, grouping in enumerate(("none", "kmeans", "random"))
        for seed in (0, 1)
    ]
    write_sweep(tmp_path, card, trials)
    md = render_table(tmp_path, "table6_grouping")
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    html = render_table(tmp_path, "table6_grouping", fmt="html")
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    frame = pd.read_csv(__import__("io").StringIO(render_table(tmp_path, "table6_grouping", fmt="csv")), index_col=0)
    assert frame.loc["kmeans", "label"] == '\'=HYPERLINK("http://x")' and frame.loc["random", "label"] == "'@SUM(A1)"
    assert frame.loc["none", "label"] == "<img src=x onerror=alert(1)>"  # not a formula: as it is
    assert frame["test_recall@1 delta"].dtype == float and frame.loc["none", "test_recall@1 delta"] == 0.0


def test_cli_csv_table_writes_its_caption_beside_it(t6_store, tmp_path, capsys):
    from dncml.platform.cli import main

    out = tmp_path / "t6.csv"
    assert main(["table", str(t6_store), "--experiment", "table6_grouping", "--format", "csv", "--out", str(out)]) == 0
    assert pd.read_csv(out, index_col=0).index.tolist() == ["none", "kmeans", "random"]
    assert (tmp_path / "t6.caption.txt").read_text().startswith("table6_grouping (preset quick;")


def test_status_shows_each_failed_trials_reason(t6_store):
    from dncml.analysis.status import render_status

    text = render_status(t6_store)
    failed = next(line for line in text.splitlines() if "t6_22" in line)
    assert "failed" in failed and failed.rstrip().endswith("RuntimeError: out of memory")
    assert text.splitlines()[1].split()[-1] == "error"


def test_cli_table_plot_status_pick_the_experiment_and_sweep(t6_store, tmp_path, capsys):
    """--experiment may be left out when the store holds one; --sweep takes an id, latest or
    all; -q works after the subcommand."""
    from dncml.platform.cli import build_parser, main

    assert main(["table", str(t6_store), "-q"]) == 0 and "| baseline (no division)" in capsys.readouterr().out
    assert main(["table", str(t6_store), "--sweep", SWEEP_T6]) == 0 and "K-means (full method)" in capsys.readouterr().out
    assert main(["plot", str(t6_store), "--sweep", "all", "--kind", "bars", "--out", str(tmp_path / "b.png")]) == 0
    assert main(["status", str(t6_store), "--sweep", "latest"]) == 0 and SWEEP_T6 in capsys.readouterr().out
    args = build_parser().parse_args(["sweep", "hpo", "-q", "--set", "run.K=4", "--set", "grid.seed=[0,1]"])
    assert args.quiet and args.set == ["run.K=4", "grid.seed=[0,1]"]
    _fig1_store(t6_store)  # a second experiment: now it must be named
    assert main(["table", str(t6_store)]) == 2
    assert "holds 2 experiments (fig1_learners, table6_grouping); name one with --experiment" in capsys.readouterr().err


def test_status_tells_seeds_apart_and_gives_the_sweeps_elapsed_time(tmp_path):
    from dncml.analysis.status import render_status

    rows = [
        trial(
            f"s{seed}", spec_grouping="kmeans", spec_seed=seed, started_at="2026-01-01T12:00:00", ended_at=f"2026-01-01T12:0{seed + 1}:00"
        )
        for seed in (0, 1)
    ]
    write_sweep(tmp_path, t6_card(), rows)
    lines = render_status(tmp_path).splitlines()
    assert lines[0].endswith(": 2 completed, 7 not started, elapsed 2m00s")  # the card plans 9
    header = lines[1].split()
    assert header[:3] == ["trial", "setting", "seed"] and [line.split()[1] for line in lines[2:]] == ["0", "1"]


def test_a_one_seed_table_has_no_n_in_its_cells(tmp_path):
    card = t6_card(metrics=["test_recall@1"])
    write_sweep(tmp_path, card, [trial(f"s{g}", spec_grouping=g, spec_seed=0, **{"best_test_recall@1": 0.5}) for g in ("none", "kmeans")])
    md = render_table(tmp_path, "table6_grouping")
    assert "(n=1)" not in md.replace("(n=1, no interval)", "") and "Each cell over 1 trial unless marked" in md


def test_markdown_rows_match_real_writer(tmp_path):
    """Rows written by the platform's own writer (ResultsStore) read back."""
    from dncml.platform.store import ResultsStore

    store = ResultsStore(tmp_path)
    sweep = "fig1_learners-smoke-20260101-000000"
    card = {
        "experiment": "fig1_learners",
        "preset": "smoke",
        "sweep": sweep,
        "rows": ["num_learners"],
        "metric": "val_recall@1",
        "mode": "max",
        "grid": {"num_learners": [1, 4], "seed": [0]},
        "table": {"baseline": 1, "metrics": ["test_recall@1"]},
        "plot": {"kind": "curves", "metric": "val_recall@1"},
    }
    (tmp_path / sweep).mkdir()
    (tmp_path / sweep / schema.CARD_FILE).write_text(json.dumps(card))
    names = ["val_recall@1", "test_recall@1"]
    for k, recall in ((1, 0.5), (4, 0.6)):
        trial_id = f"k{k}"
        for e in range(2):
            store.write_epoch(
                sweep,
                trial_id,
                {"epoch": e, "phase": "warmup" if e == 0 else "divide", "val_recall@1": recall + e / 10, "test_recall@1": recall + e / 20},
                names,
            )
        store.write_trial(
            sweep,
            {
                "trial_id": trial_id,
                "sweep": sweep,
                "experiment": "fig1_learners",
                "status": "completed",
                "spec_num_learners": k,
                "spec_seed": 0,
                "best_test_recall@1": recall,
            },
            names,
        )
    md = render_table(tmp_path, "fig1_learners")
    lines = md.partition("\n\n")[2].strip().splitlines()
    assert lines[0].startswith("| num_learners ")  # no labels: the row field names the first column
    rows = lines[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "4"]
    assert "+10.0" in rows[1]
    assert plot_experiment(tmp_path, "fig1_learners", tmp_path / "f.png").read_bytes()[:8] == PNG


# ------------------------------------------------------------------------------------- plots
@pytest.mark.parametrize("kind", ["curves", "clusters"])
def test_epoch_plots_write_png(t6_store, tmp_path, kind):
    out = plot_experiment(t6_store, "table6_grouping", tmp_path / "figs" / f"{kind}.png", kind=kind)
    assert out.is_file() and out.stat().st_size > 1000 and out.read_bytes()[:8] == PNG


def test_default_kind_and_metric_from_card(t6_store, tmp_path):
    out = plot_experiment(t6_store, "table6_grouping", tmp_path / "default.png", metric="val_recall@1")
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(StoreError, match="available per-epoch metrics"):
        plot_experiment(t6_store, "table6_grouping", tmp_path / "x.png", metric="test_nmi")
    with pytest.raises(StoreError, match="unknown plot kind"):
        plot_experiment(t6_store, "table6_grouping", tmp_path / "x.png", kind="pie")
    assert set(KINDS) == {"curves", "clusters", "metric_vs", "bars", "budget", "search"}


def _line_points(fig) -> list[int]:
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    return [len(line.get_xdata()) for line in lines if not line.get_label().startswith("_")]


def test_curves_draw_what_every_epoch_has(t6_store, tmp_path):
    """With `test_eval: selected` the test metric exists on the last epoch only: a per-epoch test
    curve is refused (saying why and what to draw instead); the validation curve has a point per
    epoch in every series; a series without points is an error, never an empty line."""
    data = load_experiment(t6_store, "table6_grouping")
    with pytest.raises(StoreError, match=r"test_eval: selected.*val_recall@1.*every_eval"):
        experiment_figure(data, "curves", "test_recall@1")
    fig = experiment_figure(data, "curves", "val_recall@1")
    assert _line_points(fig) == [4, 4, 4]  # three groupings, four epochs each
    gaps = data.epochs.assign(**{"val_recall@1": data.epochs["val_recall@1"].where(~data.epochs["trial_id"].str.startswith("t6_1"))})
    with pytest.raises(StoreError, match=r"no epoch of grouping=random .*recorded 'val_recall@1'"):
        experiment_figure(dataclasses.replace(data, epochs=gaps), "curves", "val_recall@1")


def test_a_kind_that_does_not_fit_is_refused_naming_those_that_do(t6_store, tmp_path):
    data = load_experiment(t6_store, "table6_grouping")  # a grid over the categorical grouping
    with pytest.raises(StoreError, match=r"'metric_vs' does not fit .*grouping is categorical.*kinds that do: curves, clusters, bars$"):
        experiment_figure(data, "metric_vs")
    with pytest.raises(StoreError, match=r"'search' does not fit .*not a search"):
        plot_experiment(t6_store, "table6_grouping", tmp_path / "s.png", kind="search")
    assert not (tmp_path / "s.png").exists()


def test_figures_keep_the_sweep_in_their_metadata_not_the_title(t6_store, tmp_path):
    from PIL import Image

    data = load_experiment(t6_store, "table6_grouping")
    fig = experiment_figure(data, "bars")
    titles = [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""]
    assert not any(SWEEP_T6 in t for t in titles)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["baseline (no\ndivision)", "K-means (full\nmethod)", "random"]  # wrapped, readable
    assert len(fig.axes[0].collections[0].get_offsets()) + sum(len(c.get_offsets()) for c in fig.axes[0].collections[1:]) == 8
    out = plot_experiment(t6_store, "table6_grouping", tmp_path / "bars.png", kind="bars")
    info = Image.open(out).info
    assert SWEEP_T6 in info["Title"] and SWEEP_T6 in info["Description"]


def test_categories_are_never_joined_by_lines(tmp_path):
    card = t6_card(metrics=["test_recall@1"])
    card.update(rows=["grouping", "num_learners"], plot={"kind": "metric_vs", "x": "grouping"})
    trials = [
        trial(f"c{g}{k}{s}", spec_grouping=g, spec_num_learners=k, spec_seed=s, **{"best_test_recall@1": 0.5 + s / 100})
        for g in ("none", "kmeans")
        for k in (2, 4)
        for s in (0, 1)
    ]
    write_sweep(tmp_path, card, trials)
    with pytest.raises(StoreError, match="categorical"):
        experiment_figure(load_experiment(tmp_path, "table6_grouping"))
    card.update(plot={"kind": "metric_vs", "x": "num_learners"})
    (tmp_path / card["sweep"] / schema.CARD_FILE).write_text(json.dumps(card))
    fig = experiment_figure(load_experiment(tmp_path, "table6_grouping"))  # numbers on x: lines
    assert {bars.lines[0].get_linestyle() for bars in fig.axes[0].containers} == {"-"}


def test_clusters_plot_draws_what_each_division_did(t6_store):
    """`dncml plot --kind clusters`: per division round and setting, class purity, group purity,
    classes per cluster and samples moved, from the epochs; then the cluster sizes."""
    from dncml.analysis.plots import cluster_evidence

    data = load_experiment(t6_store, "table6_grouping")
    evidence = cluster_evidence(data)
    assert set(evidence["key"]) == {"kmeans", "random"}  # the baseline never divides
    assert sorted(evidence.loc[evidence["key"] == "random", "class_purity"]) == pytest.approx([0.3] * 3 + [0.35] * 3)
    assert evidence.loc[evidence["key"] == "kmeans", "classes_per_cluster"].tolist() == pytest.approx([2.5] * 4)
    fig = experiment_figure(data, "clusters")
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert sum(label.startswith(("class purity", "group purity", "classes per cluster", "samples that")) for label in labels) == 4
    purity = next(ax for ax in fig.axes if ax.get_ylabel().startswith("class purity"))
    assert sorted(tuple(np.round(line.get_ydata(), 3)) for line in purity.get_lines() if len(line.get_xdata()) == 2) == [
        (0.3, 0.35),
        (0.8, 0.85),
    ]


def test_metric_vs_and_search_plots(tmp_path):
    card = {
        "experiment": "t_sensitivity",
        "preset": "smoke",
        "sweep": "t_sensitivity-smoke-20260101-000000",
        "rows": ["recluster_every"],
        "metric": "val_recall@1",
        "mode": "max",
        "grid": {"recluster_every": [1, 2, 4], "seed": [0, 1]},
        "table": {"metrics": ["test_recall@1", "cluster_seconds"]},
        "plot": {"kind": "metric_vs", "x": "recluster_every", "metric": "test_recall@1"},
    }
    write_sweep(
        tmp_path,
        card,
        [
            trial(
                f"t{t}{s}",
                experiment="t_sensitivity",
                spec_recluster_every=t,
                spec_seed=s,
                cluster_seconds=4.0 / t,
                **{"best_test_recall@1": 0.5 + 0.01 * s},
            )
            for t in (1, 2, 4)
            for s in (0, 1)
        ],
    )
    assert plot_experiment(tmp_path, "t_sensitivity", tmp_path / "mv.png").read_bytes()[:8] == PNG
    table = experiment_table(load_experiment(tmp_path, "t_sensitivity"))
    assert table.index.tolist() == ["1", "2", "4"] and math.isnan(table.loc["2", "test_recall@1 delta"])
    assert "Δ" not in render_table(tmp_path, "t_sensitivity").splitlines()[2]  # no baseline, no Δ column

    card = {
        "experiment": "hpo",
        "preset": "smoke",
        "sweep": "hpo-smoke-20260101-000000",
        "rows": [],
        "metric": "val_recall@1",
        "mode": "max",
        "grid": {},
        "search": {"lr": {"loguniform": [1e-4, 3e-3]}, "num_learners": {"choice": [2, 4]}},
        "table": {"metrics": ["val_recall@1", "test_recall@1"]},
        "plot": {"kind": "search"},
    }
    write_sweep(
        tmp_path,
        card,
        [
            trial(
                f"h{i:02d}",
                experiment="hpo",
                status="pruned" if i == 2 else "completed",
                spec_lr=1e-4 * (i + 1),
                spec_num_learners=2 + 2 * (i % 2),
                spec_seed=0,
                **{"best_val_recall@1": 0.3 + 0.1 * i, "best_test_recall@1": 0.2 + 0.1 * i},
            )
            for i in range(4)
        ],
    )
    assert plot_experiment(tmp_path, "hpo", tmp_path / "search.png").read_bytes()[:8] == PNG
    table = experiment_table(load_experiment(tmp_path, "hpo"))
    assert table.index.tolist() == ["h00", "h01", "h03"]  # one row per completed trial
    assert table["val_recall@1 best"].tolist() == [False, False, True]
    header, *_, last = render_table(tmp_path, "hpo").strip().splitlines()[2:]
    assert [c.strip() for c in header.strip("|").split("|")][:3] == ["trial_id", "lr", "num_learners"]  # what each sampled
    assert [c.strip() for c in last.strip("|").split("|")][:3] == ["h03", "0.0004", "4"]


def test_paired_delta_within_sweep_and_seed_else_by_seed(tmp_path):
    """Pooled sweeps: a trial pairs with the baseline's trial of its sweep and seed, else with the
    baseline's mean for its seed; a seed the baseline never ran is left unpaired."""
    values = {
        "20260101-000000": {"none": {0: 0.50, 1: 0.40}, "kmeans": {0: 0.52, 2: 0.90}},
        "20260102-000000": {"none": {0: 0.60}, "kmeans": {0: 0.63, 1: 0.47}},
    }
    for stamp, rows in values.items():
        card = {**t6_card(), "sweep": f"table6_grouping-quick-{stamp}"}
        write_sweep(
            tmp_path,
            card,
            [
                trial(f"{stamp[6:8]}{g}{seed}", spec_grouping=g, spec_seed=seed, **{"best_test_recall@1": v})
                for g, seeds in rows.items()
                for seed, v in seeds.items()
            ],
        )
    table = experiment_table(load_experiment(tmp_path, "table6_grouping", sweep="all"), ["test_recall@1"])
    differences = [0.52 - 0.50, 0.63 - 0.60, 0.47 - 0.40]  # (sweep 1, seed 0), (sweep 2, seed 0), seed 1 of sweep 1
    half = stats.t.ppf(0.975, 2) * np.std(differences, ddof=1) / math.sqrt(3)
    row = table.loc["kmeans"]
    assert row["test_recall@1 delta n"] == 3 and row["test_recall@1 n"] == 4
    assert row["test_recall@1 delta"] == pytest.approx(np.mean(differences))
    assert row["test_recall@1 delta low"] == pytest.approx(np.mean(differences) - half)
    assert row["test_recall@1 delta high"] == pytest.approx(np.mean(differences) + half)


def partial_store(root: Path) -> Path:
    """none: 2 completed seeds; kmeans: seed 0 completed, seed 1 running (no best_ values yet; its
    val R@1 ties at epochs 1 and 2), seed 2 interrupted (its row holds a best value), seed 3 failed."""
    card = {**t6_card(), "sweep": "table6_grouping-quick-20260101-000000"}
    trials = [
        trial("n0", spec_grouping="none", spec_seed=0, **{"best_test_recall@1": 0.50}),
        trial("n1", spec_grouping="none", spec_seed=1, **{"best_test_recall@1": 0.52}),
        trial("k0", spec_grouping="kmeans", spec_seed=0, **{"best_test_recall@1": 0.60}),
        trial("k1", "running", spec_grouping="kmeans", spec_seed=1, **{"best_test_recall@1": None}),
        trial("k2", "interrupted", spec_grouping="kmeans", spec_seed=2, **{"best_test_recall@1": 0.58}),
        trial("k3", "failed", error="boom", spec_grouping="kmeans", spec_seed=3),
    ]
    epochs = [  # best_epoch as the trainer reports it: on the tie (no MAP@R to break it), the later epoch
        {"trial_id": "k1", "epoch": e, "phase": "divide", "val_recall@1": v, "test_recall@1": t, "best_epoch": b}
        for e, (v, t, b) in enumerate([(0.5, 0.40, 0), (0.7, 0.45, 1), (0.7, 0.48, 2), (None, None, 2)])
    ]
    write_sweep(root, card, trials, epochs)
    return root


def test_include_running_shows_partial_trials_at_their_best_so_far(tmp_path):
    root = partial_store(tmp_path)
    assert experiment_table(load_experiment(root, "table6_grouping")).loc["kmeans", "trials"] == 1
    table = experiment_table(load_experiment(root, "table6_grouping"), include_running=True)
    kmeans = table.loc["kmeans"]
    assert kmeans["trials"] == 3 and kmeans["partial"] == 2 and table.loc["none", "partial"] == 0
    assert kmeans["label"] == "K-means (full method) (partial: 1 running, 1 interrupted)"
    assert table.loc["none", "label"] == "baseline (no division)"
    # The running trial's best epoch so far: val R@1 0.7 at epochs 1 and 2, the later wins (test 0.48).
    assert kmeans["test_recall@1 mean"] == pytest.approx((0.60 + 0.48 + 0.58) / 3)
    assert kmeans["test_recall@1 delta n"] == 2  # seeds 0 and 1 pair with the baseline
    assert kmeans["test_recall@1 delta"] == pytest.approx(((0.60 - 0.50) + (0.48 - 0.52)) / 2)
    loaded = load_experiment(root, "table6_grouping", include_running=True)  # the flag carries to the table
    assert experiment_table(loaded).loc["kmeans", "trials"] == 3

    md = render_table(root, "table6_grouping", include_running=True)
    caption = md.partition("\n\n")[0]
    assert "3 completed, 1 running, 1 interrupted trials" in caption and "(1 failed not shown)" in caption
    assert "Rows marked partial hold running or interrupted trials, at their best epoch so far." in caption
    assert "K-means (full method) (partial: 1 running, 1 interrupted)" in md
    assert "partial" not in render_table(root, "table6_grouping")

    figure = experiment_figure(loaded, "bars", "test_recall@1")
    assert "2 running or interrupted trials" in figure.axes[0].get_title()
    assert plot_experiment(root, "table6_grouping", tmp_path / "bars.png", kind="bars", include_running=True).read_bytes()[:8] == PNG


def test_include_running_accepts_a_sweep_with_no_completed_trial(tmp_path):
    card = {**t6_card(), "sweep": "table6_grouping-quick-20260101-000000"}
    write_sweep(
        tmp_path,
        card,
        [trial("r0", "running", spec_grouping="none", spec_seed=0)],
        [{"trial_id": "r0", "epoch": 0, "phase": "warmup", "val_recall@1": 0.3, "test_recall@1": 0.25, "best_epoch": 0}],
    )
    with pytest.raises(StoreError, match="no completed trials"):
        load_experiment(tmp_path, "table6_grouping")
    table = experiment_table(load_experiment(tmp_path, "table6_grouping", include_running=True))
    assert table.loc["none", "test_recall@1 mean"] == pytest.approx(0.25)
    assert table.loc["none", "label"].endswith("(partial: 1 running)")


def test_unreadable_parquet_files_are_skipped_and_named(t6_store):
    directory = t6_store / SWEEP_T6
    (directory / "trials" / "garbage.parquet").write_bytes(b"not a parquet file" * 10)
    whole = (directory / "epochs" / "t6_00-e0000.parquet").read_bytes()
    (directory / "epochs" / "t6_00-e0000.parquet").write_bytes(whole[: len(whole) // 2])  # truncated
    with pytest.warns(UserWarning) as caught:
        data = load_experiment(t6_store, "table6_grouping")
    warned = [str(w.message) for w in caught]
    assert any("garbage.parquet" in m for m in warned) and any("t6_00-e0000.parquet" in m for m in warned)
    assert len(data.trials) == 9 and len(data.epochs) == 8 * 4 - 1  # every readable file still read
    assert len(data.skipped) == 2
    assert any(s.startswith(str(directory / "trials" / "garbage.parquet") + ": ") for s in data.skipped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md = render_table(t6_store, "table6_grouping")
    skipped_line = next(line for line in md.splitlines() if line.startswith("Skipped 2 unreadable files: "))
    assert "garbage.parquet" in skipped_line and "t6_00-e0000.parquet" in skipped_line


@pytest.mark.parametrize(
    "suffix, magic", [(".pdf", b"%PDF"), (".svg", b"<?xml"), (".jpg", b"\xff\xd8"), (".JPEG", b"\xff\xd8"), (".png", PNG)]
)
def test_figures_are_written_in_the_format_their_extension_names(t6_store, tmp_path, suffix, magic):
    out = plot_experiment(t6_store, "table6_grouping", tmp_path / f"curves{suffix}")
    assert out.read_bytes().startswith(magic)


@pytest.mark.parametrize("name", ["curves.gif", "curves"])
def test_unknown_figure_extensions_are_refused(t6_store, tmp_path, name):
    with pytest.raises(StoreError, match=r"use one of \.png, \.pdf, \.svg, \.jpg, \.jpeg"):
        plot_experiment(t6_store, "table6_grouping", tmp_path / name)
    assert not (tmp_path / name).exists()


# recall per (K, epochs) and seed: K = 4 gains +0.05 ± 0.01 at 2 divide epochs, +0.01 ± 0.01 at 4
BUDGET_RECALL = {(1, 2): [0.50, 0.52, 0.54], (4, 2): [0.55, 0.56, 0.60], (1, 4): [0.60, 0.61, 0.62], (4, 4): [0.61, 0.63, 0.62]}


def budget_store(root: Path, steps: dict | None = None, **card) -> Path:
    """steps: (K, epochs) -> the trials' train_steps (None: round robin's, D&C gets more)."""
    card = {
        "experiment": "budget",
        "preset": "smoke",
        "sweep": "budget-smoke-20260101-000000",
        "rows": ["K", "epochs"],
        "metric": "val_recall@1",
        "mode": "max",
        "grid": {"num_learners": [1, 4], "epochs": [2, 4], "seed": [0, 1, 2]},
        "table": {"baseline": {"K": 1}, "metrics": ["test_recall@1"]},
        "plot": {"kind": "budget", "x": "epochs", "metric": "test_recall@1"},
        **card,
    }
    write_sweep(
        root,
        card,
        [
            trial(
                f"b{k}{e}{s}",
                experiment="budget",
                spec_num_learners=k,
                spec_epochs=e,
                spec_seed=s,
                spec_warmup_epochs=1,
                train_steps=steps[k, e] if steps else 10 * (1 + e) * (2 if k > 1 else 1),
                **{"best_test_recall@1": v},
            )  # no finetune column: 0
            for (k, e), values in BUDGET_RECALL.items()
            for s, v in enumerate(values)
        ],
    )
    return root


def test_budget_plot_lines_intervals_and_paired_deltas(tmp_path):
    data = load_experiment(budget_store(tmp_path), "budget")
    summary = budget_summary(data).set_index(["line", "budget"])
    assert summary.attrs["x"] == "epochs" and summary.attrs["fields"] == ["num_learners"]
    assert sorted(summary.index) == [("1", 3.0), ("1", 5.0), ("4", 3.0), ("4", 5.0)]  # warm-up 1 + divide 2 or 4
    t2 = stats.t.ppf(0.975, 2)
    one = summary.loc[("1", 3.0)]
    assert one["mean"] == pytest.approx(0.52) and one["n"] == 3
    assert one["high"] - one["mean"] == pytest.approx(t2 * 0.02 / math.sqrt(3))
    assert one["delta n"] == 0 and one["label"] == "K=1"
    assert one["steps"] == 30 and summary.loc[("4", 5.0)]["steps"] == 100  # the budget in optimiser steps too
    short, long = summary.loc[("4", 3.0)], summary.loc[("4", 5.0)]
    assert short["delta"] == pytest.approx(0.05) and short["delta n"] == 3
    assert short["delta high"] - short["delta"] == pytest.approx(t2 * 0.01 / math.sqrt(3))
    assert not short["delta noise"]
    assert long["delta"] == pytest.approx(0.01) and long["delta noise"]  # the gain is within noise at 5 epochs

    figure = experiment_figure(data)
    top, bottom = figure.axes[:2]
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["K=1 (n=3)", "K=4 (n=3)"]
    assert any(list(line.get_ydata()) == [0.0, 0.0] for line in bottom.get_lines())  # the zero line
    assert "budget" in bottom.get_xlabel() and "Δ R@1" in bottom.get_ylabel()
    assert "--" not in [line.get_linestyle() for line in bottom.get_lines()]  # no equal-steps pairs here: no dashed Δ
    assert plot_experiment(data, "budget", tmp_path / "budget.png").read_bytes()[:8] == PNG
    without = dataclasses.replace(data, card={**data.card, "table": {"metrics": ["test_recall@1"]}})
    assert len(experiment_figure(without).axes) == 1  # no baseline: no Δ panel


def test_budget_summary_compares_at_equal_steps(tmp_path):
    """Under a schedule that gives D&C more steps at one budget (recipe authors_code), the
    summary also pairs each D&C seed with the same seed's baseline at the same optimiser steps:
    interpolated linearly in log steps between the two baseline budgets that bracket them, and
    not at all outside the baseline's budgets (no extrapolation)."""
    steps = {(1, 2): 30, (1, 4): 60, (4, 2): 40, (4, 4): 80}  # baseline doubles; D&C at 40 lies between
    budget_store(tmp_path, steps=steps)
    summary = budget_summary(load_experiment(tmp_path, "budget")).set_index(["line", "budget"])
    at = math.log(40 / 30) / math.log(60 / 30)  # where 40 steps lie between 30 and 60, in log steps
    per_seed = [dc - (b2 + at * (b4 - b2)) for dc, b2, b4 in zip(BUDGET_RECALL[4, 2], BUDGET_RECALL[1, 2], BUDGET_RECALL[1, 4])]
    short = summary.loc[("4", 3.0)]  # warm-up 1 + divide 2
    assert short["steps delta n"] == 3 and short["steps delta"] == pytest.approx(np.mean(per_seed))
    half = stats.t.ppf(0.975, 2) * np.std(per_seed, ddof=1) / math.sqrt(3)
    assert short["steps delta high"] - short["steps delta"] == pytest.approx(half)
    assert short["steps delta"] < short["delta"]  # the baseline with as many steps is closer than at equal epochs
    assert summary.loc[("4", 5.0)]["steps delta n"] == 0  # 80 steps: past the baseline's longest budget
    assert summary.loc[("1", 3.0)]["steps delta n"] == 0  # the baseline itself
    bottom = experiment_figure(load_experiment(tmp_path, "budget")).axes[1]
    assert [line.get_linestyle() for line in bottom.get_lines()].count("--") == 1  # the equal-steps Δ, drawn once
    assert "optimiser steps" in bottom.get_title()


def test_aliases_come_from_the_card(tmp_path):
    budget_store(
        tmp_path,
        rows=["L", "epochs"],
        aliases={"L": "num_learners", "E": "epochs"},
        table={"baseline": {"L": 1}, "metrics": ["test_recall@1"]},
    )
    data = load_experiment(tmp_path, "budget")
    assert row_fields(data) == ["num_learners", "epochs"] and short_name(data, "num_learners") == "L"
    assert row_label(data, "4,2", named=True) == "L=4, E=2"
    assert experiment_table(data).loc["4,2", "test_recall@1 delta"] == pytest.approx(0.05)
    old = dataclasses.replace(data, card={k: v for k, v in data.card.items() if k != "aliases"})
    assert short_name(old, "num_learners") == "K"  # stores before the card named them: the fallback


def test_search_plot_adds_optunas_figures(tmp_path):
    optuna = pytest.importorskip("optuna")
    import matplotlib

    sweep = "hpo-smoke-20260101-000000"
    card = {
        "experiment": "hpo",
        "preset": "smoke",
        "sweep": sweep,
        "rows": [],
        "metric": "val_recall@1",
        "mode": "max",
        "grid": {},
        "search": {"lr": {"loguniform": [1e-4, 1e-2]}, "K": {"choice": [2, 4]}},
        "table": {"metrics": ["val_recall@1"]},
        "plot": {"kind": "search"},
    }
    directory = write_sweep(
        tmp_path,
        card,
        [
            trial(
                f"h{i:02d}",
                experiment="hpo",
                spec_lr=1e-4 * (i + 1),
                spec_num_learners=2 + 2 * (i % 2),
                spec_seed=0,
                **{"best_val_recall@1": 0.3 + 0.05 * i},
            )
            for i in range(5)
        ],
    )
    assert load_study(tmp_path, sweep) is None  # no optuna.db yet
    assert plot_experiment(tmp_path, "hpo", tmp_path / "plain.png").is_file()
    assert not any(p.exists() for p in optuna_paths(tmp_path / "plain.png").values())

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=sweep, storage=f"sqlite:///{directory / 'optuna.db'}", direction="maximize", sampler=optuna.samplers.TPESampler(seed=0)
    )
    study.optimize(
        lambda t: (
            1 - (t.suggest_float("lr", 1e-4, 1e-2, log=True) - 3e-3) ** 2 * 1e4 - 0.01 * t.suggest_categorical("num_learners", [2, 4])
        ),
        n_trials=8,
    )
    loaded = load_study(tmp_path, sweep)
    assert loaded.study_name == sweep and len(loaded.trials) == 8
    style = dict(matplotlib.rcParams)
    out = plot_experiment(tmp_path, "hpo", tmp_path / "search.pdf")
    assert out.read_bytes()[:4] == b"%PDF"
    paths = optuna_paths(out)
    assert [p.name for p in paths.values()] == ["search-optuna-history.pdf", "search-optuna-importances.pdf"]
    assert all(p.read_bytes()[:4] == b"%PDF" for p in paths.values())
    assert dict(matplotlib.rcParams) == style  # Optuna's ggplot style did not leak

    other = tmp_path / "hpo-smoke-20260102-000000"
    other.mkdir()
    (other / "optuna.db").write_bytes(b"not a database" * 100)
    with pytest.warns(UserWarning, match="no readable Optuna study"):
        assert load_study(tmp_path, other.name) is None


def test_locate_store_from_the_repository_root(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "analysis" / "notebooks").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("")
    (repo / "results").mkdir()
    notebooks = repo / "analysis" / "notebooks"
    assert locate_store("results", notebooks) == repo / "results"  # found at the root
    (notebooks / "results").mkdir()
    assert locate_store("results", notebooks) == notebooks / "results"  # the current directory first
    assert locate_store(repo / "results", tmp_path) == repo / "results"
    monkeypatch.chdir(repo / "analysis")
    assert locate_store("results").resolve() == (repo / "results").resolve()
    with pytest.raises(StoreError, match=r"results store 'nowhere' not found: tried .*analysis/nowhere, .*repo/nowhere"):
        locate_store("nowhere")
    with pytest.raises(StoreError, match="no pyproject.toml at or above"):
        locate_store("results", tmp_path)


# ------------------------------------------------------------------------------ store errors
def test_store_errors(tmp_path, t6_store):
    with pytest.raises(StoreError, match="does not exist"):
        load_experiment(tmp_path / "nowhere", "table6_grouping")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="holds no sweeps"):
        load_experiment(tmp_path / "empty", "table6_grouping")
    with pytest.raises(StoreError, match=r"no sweep of experiment 'fig1_learners'.*it holds: table6_grouping \(1 sweep\)"):
        render_table(t6_store, "fig1_learners")
    with pytest.raises(StoreError, match=r"no trial of 'table6_grouping' recorded metric 'test_recall@1000'.*available: .*test_recall@1"):
        render_table(t6_store, "table6_grouping", metrics=["test_recall@1000"])
    (t6_store / "stray-sweep" / "trials").mkdir(parents=True)
    with pytest.raises(StoreError, match="has no experiment.json"):
        load_experiment(t6_store, "table6_grouping", sweep="stray-sweep")
    with pytest.raises(StoreError, match="without experiment.json: stray-sweep"):
        load_experiment(t6_store, "hierarchy")
    assert list_experiments(t6_store) == {"table6_grouping": [SWEEP_T6]}
    with pytest.raises(StoreError, match="no sweep 'nope'"):
        load_experiment(t6_store, "table6_grouping", sweep="nope")
    for error in (StoreError("x"),):
        assert isinstance(error, ValueError)


def test_all_trials_failed(tmp_path):
    card = {**t6_card(), "sweep": "table6_grouping-quick-20260101-000000"}
    write_sweep(
        tmp_path,
        card,
        [
            trial("f1", "failed", error="Traceback (most recent call last):\nValueError: bad data_root", spec_grouping="none", spec_seed=0),
            trial("f2", "running", spec_grouping="kmeans", spec_seed=0),
        ],
    )
    with pytest.raises(StoreError, match=r"no completed trials .*1 failed, 1 running.*first error: ValueError: bad data_root"):
        render_table(tmp_path, "table6_grouping")
    data = load_experiment(tmp_path, "table6_grouping", require_completed=False)
    assert sorted(data.trials["status"]) == ["failed", "running"]
    (tmp_path / "table6_grouping-quick-20260101-000000" / "trials").mkdir(exist_ok=True)
    write_sweep(tmp_path, {**card, "sweep": "table6_grouping-quick-20260103-000000"}, [])
    with pytest.raises(StoreError, match="no trials recorded yet"):
        load_experiment(tmp_path, "table6_grouping")


def test_differing_columns_still_combine(tmp_path):
    """An older writer's trial (no NMI, int seconds, an extra column) next to a newer one."""
    card = {**t6_card(), "sweep": "table6_grouping-quick-20260101-000000"}
    directory = write_sweep(
        tmp_path, card, [trial("a", spec_grouping="none", spec_seed=0, cluster_seconds=None, **{"best_test_recall@1": 0.5})]
    )
    _write(
        directory / "trials" / "b.parquet",
        {
            "sweep": card["sweep"],
            "trial_id": "b",
            "status": "completed",
            "spec_grouping": "kmeans",
            "spec_seed": 0,
            "cluster_seconds": 3,
            "best_test_recall@1": 0.6,
            "best_test_nmi": 0.4,
            "new_column": "x",
        },
    )
    _write(directory / "trials" / ".b.parquet.1234.tmp", {"garbage": 1})  # a half-written file: skipped
    _write(directory / "trials" / "_SUCCESS.parquet", {"garbage": 1})
    data = load_experiment(tmp_path, "table6_grouping")
    assert len(data.trials) == 2 and "garbage" not in data.trials
    assert data.trials["cluster_seconds"].dtype.kind == "f"
    table = experiment_table(data)
    assert table.loc["kmeans", "test_nmi n"] == 1 and table.loc["none", "test_nmi n"] == 0
    assert table.loc["kmeans", "cluster_seconds mean"] == 3.0


def test_sweep_selection_newest_and_all(tmp_path):
    def sweep(stamp, preset, recall):
        card = {**t6_card(), "preset": preset, "sweep": f"table6_grouping-{preset}-{stamp}"}
        write_sweep(
            tmp_path, card, [trial(f"{stamp[-2:]}{preset[0]}", spec_grouping="none", spec_seed=0, **{"best_test_recall@1": recall})]
        )
        return card["sweep"]

    old = sweep("20260101-000000", "quick", 0.2)
    smoke = sweep("20260102-000000", "smoke", 0.9)
    new = sweep("20260103-000000", "quick", 0.4)
    assert list_experiments(tmp_path) == {"table6_grouping": [old, smoke, new]}
    assert load_experiment(tmp_path, "table6_grouping").sweeps == [new]
    pooled = load_experiment(tmp_path, "table6_grouping", sweep="all")
    assert pooled.sweeps == [old, new] and len(pooled.trials) == 2  # same preset as the newest only
    table = experiment_table(pooled)
    assert table.loc["none", "test_recall@1 mean"] == pytest.approx(0.3) and table.loc["none", "test_recall@1 n"] == 2
    assert "2 sweeps" in render_table(tmp_path, "table6_grouping", sweep="all")
    assert load_experiment(tmp_path, "table6_grouping", sweep=smoke).preset == "smoke"


def test_analysis_imports_no_ray_torch_or_platform():
    code = (
        "import sys, dncml.analysis.store, dncml.analysis.vocabulary, dncml.analysis.tables, dncml.analysis.plots; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'ray') or "
        "m.startswith(('dncml.platform', 'dncml.trainers', 'dncml.experiments'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------- notebooks
NOTEBOOKS = Path(__file__).resolve().parents[1] / "analysis" / "notebooks"


def _fig1_store(root: Path) -> None:
    card = {
        "experiment": "fig1_learners",
        "preset": "quick",
        "sweep": "fig1_learners-quick-20260101-000000",
        "rows": ["num_learners"],
        "metric": "val_recall@1",
        "mode": "max",
        "grid": {"num_learners": [1, 2, 4], "seed": [0, 1]},
        "table": {"baseline": 1, "metrics": ["test_recall@1", "test_nmi"]},
        "plot": {"kind": "curves", "hue": "num_learners", "metric": "val_recall@1"},
    }
    trials, epochs = [], []
    for k in (4, 1, 2):
        for seed in (0, 1):
            trial_id = f"k{k}s{seed}"
            trials.append(
                trial(
                    trial_id,
                    experiment="fig1_learners",
                    spec_num_learners=k,
                    spec_seed=seed,
                    **{"best_test_recall@1": 0.5 + k / 100, "best_test_nmi": 0.4},
                )
            )
            epochs += [
                {**row, "cluster_sizes": row["cluster_sizes"] if k > 1 else None}
                for row in epoch_rows(trial_id, "kmeans" if k > 1 else "none", seed, epochs=3)
            ]
    write_sweep(root, card, trials, epochs)


NOTEBOOK_FIGURES = {
    # test_eval: selected (the fixtures' default): validation curves only, no test curve
    "table6_grouping": {"table6_val_recall_curves.png"},
    "fig1_learners": {"fig1_val_recall_at_1.png", "fig1_clusters.png"},
}


def notebook_runner():
    """nbformat and nbclient, with a Jupyter kernel named python3 to run notebooks on; the test
    is skipped where the environment has none of them."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no Jupyter kernel named python3 (pip install ipykernel in this environment)")
    return nbformat, nbclient


@pytest.mark.parametrize("name, expected", [("table6_grouping", ["none", "kmeans", "random"]), ("fig1_learners", ["1", "2", "4"])])
def test_notebooks_execute(t6_store, tmp_path, name, expected):
    nbformat, nbclient = notebook_runner()
    if name == "fig1_learners":
        _fig1_store(t6_store)
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert first.source.strip() == 'STORE = "results"'
    first.source = f"STORE = {str(t6_store)!r}"
    work = tmp_path / "run"
    work.mkdir()
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(work)}}).execute()
    last = [cell for cell in nb.cells if cell.cell_type == "code"][-1]
    assert "table = " in last.source
    printed = "".join(o.get("text", "") for o in last.outputs if o.get("output_type") == "stream")
    assert printed.strip() == repr(expected)
    figures = {p.name for p in (work / "figures").iterdir()}
    assert figures == NOTEBOOK_FIGURES[name]
    assert all((work / "figures" / f).read_bytes()[:8] == PNG for f in figures)
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.get("output_type") == "error"]
    assert not errors


def test_notebook_finds_a_relative_store_from_the_repository_root(t6_store, tmp_path):
    """Run from analysis/notebooks of a checkout, `STORE = "results"` (left as shipped) is the
    store at the repository root."""
    nbformat, nbclient = notebook_runner()
    repo = tmp_path / "checkout"
    (repo / "analysis" / "notebooks").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("")
    t6_store.rename(repo / "results")
    nb = nbformat.read(NOTEBOOKS / "table6_grouping.ipynb", as_version=4)
    nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(repo / "analysis" / "notebooks")}}
    ).execute()
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    assert printed.strip() == repr(["none", "kmeans", "random"])
