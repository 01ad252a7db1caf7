"""`dncml`: the command line.

    dncml datasets list | prepare glyphs | check NAME --root DIR | pack NAME --root DIR --out DIR | show NAME --out FILE.png
    dncml train RUNSPEC.yaml [--set field=value ...] [--local | --num-workers N --use-gpu --address A]
    dncml embed CHECKPOINT --split test --out FILE.parquet
    dncml retrievals CHECKPOINT|--trial ID --out FILE.png
    dncml sweep SPEC.yaml [--preset NAME] [--address A] [--storage DIR|s3://BUCKET/PREFIX] [--resume]
    dncml table STORE --experiment NAME [--format md|latex|html] [--out FILE]
    dncml plot STORE --experiment NAME --out FILE.png

Heavy imports (torch, ray) happen inside the subcommands, so `dncml datasets list` is instant.
Errors are printed as one line on stderr, never a traceback (the trace with -v): exit status 2 for
input a user can fix, 1 for a run that failed, 130 / 143 after Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from dncml.trainers.registry import DATASETS  # light: the declarations, no reader


class UsageError(Exception):
    """A problem with the user's input; printed without a traceback."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """The error types a user can fix. Their modules are light (no torch, no ray), so the error
    path stays fast."""
    from dncml.analysis.schema import StoreError  # the store's one error: its writer's and its readers'
    from dncml.experiments.loader import ExperimentError
    from dncml.platform.errors import PlatformError
    from dncml.trainers.data.base import DatasetError
    from dncml.trainers.spec import SpecError

    return (UsageError, DatasetError, SpecError, FileNotFoundError, ExperimentError, PlatformError, StoreError)


# ---------------------------------------------------------------------------------- datasets
EMBEDDED = tuple(name for name in DATASETS.names() if DATASETS.info(name).embedded)  # rendered here, not read from an archive
WITH_ROOT = tuple(name for name in DATASETS.names() if DATASETS.info(name).needs_root)


def _glyph_config(args):
    from dncml.trainers.data.glyphs import GlyphConfig

    try:
        return GlyphConfig(num_classes=args.classes, instances_per_class=args.instances, image_size=args.image_size, seed=args.seed)
    except ValueError as error:
        raise UsageError(str(error)) from None


def cmd_datasets_list(args) -> int:
    from dncml.trainers.data.base import default_cache_dir

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    prepared = sorted(p.name for p in (cache / "glyphs").glob("*") if (p / "meta.json").is_file()) if (cache / "glyphs").is_dir() else []
    for name in DATASETS.names():
        info = DATASETS.info(name)
        print(f"{name:<10} {info.title}")
        if info.embedded:  # every embedded dataset is a view of the glyphs render
            print(f"           cache: {cache / 'glyphs'}  prepared: {', '.join(prepared) or f'none yet (dncml datasets prepare {name})'}")
        else:
            print(f"           unpack: {info.archive}")
            expected = ", ".join(info.required_files) or "one sub-folder of images per class"
            print(f"           expects under --root / data_root: {expected}")
        print(f"           Recall@K: {', '.join(map(str, info.recall_ks))}; group labels: {'yes' if info.has_groups else 'no'}")
    return 0


def cmd_datasets_prepare(args) -> int:
    if args.name not in EMBEDDED:
        raise UsageError(
            f"only {' and '.join(EMBEDDED)} are rendered locally; {args.name!r} is read from its archive "
            f"(dncml datasets check {args.name} --root DIR)"
        )
    from dncml.trainers.data.glyphs import glyphs_cache_path, load_glyphs, prepare_glyphs

    config = _glyph_config(args)
    started = time.perf_counter()
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    cached = glyphs_cache_path(config, cache_dir).is_dir()
    path = prepare_glyphs(config, cache_dir, progress=True)
    bundle = load_glyphs(config, cache_dir, progress=False)
    how = "already cached" if cached else "rendered"
    print(f"glyphs ready at {path} ({how}; {time.perf_counter() - started:.1f} s)")
    _print_summary(bundle.summary())
    groups = {bundle.group_names.get(int(g), str(g)) for g in set(bundle.train.groups.tolist())}
    print(f"groups ({len(groups)}): {', '.join(sorted(groups))}")
    return 0


def _print_summary(summary: dict) -> None:
    print(f"{'split':<22}{'classes':>9}{'images':>10}")
    for split, row in summary.items():
        print(f"{split:<22}{row['classes']:>9}{row['images']:>10}")


def _embedded_bundle(args):
    """An embedded dataset through its registered reader, as a run with these options reads it."""
    from dncml.trainers.spec import from_dict

    _glyph_config(args)  # the options' own check first: its message names them
    options = {"glyph_classes": args.classes, "glyph_instances": args.instances, "image_size": args.image_size, "dataset_seed": args.seed}
    spec = from_dict({"dataset": args.name, **options})
    return DATASETS.create(args.name, spec, cache_dir=Path(args.cache_dir) if args.cache_dir else None)


def cmd_datasets_check(args) -> int:
    if args.name in EMBEDDED:
        bundle = _embedded_bundle(args)
        if args.name == "glyph_families":
            _print_shape(bundle, args)
        else:
            _print_summary(bundle.summary())
        return 0
    if not args.root:
        raise UsageError(f"dncml datasets check {args.name} needs --root DIR (the unpacked archive)")
    from dncml.trainers.data.benchmarks import check_dataset

    report = check_dataset(args.name, args.root, verify_images=args.verify_images, progress=args.verify_images)
    packed = " (a pack: shards and index intact)" if report["packed"] else ""
    print(f"{report['title']} at {report['root']}{packed}: {report['images']} image files")
    _print_summary(report["splits"])
    if report["has_groups"]:
        print(f"group labels: {report['num_groups']} groups")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    return 0


def cmd_datasets_pack(args) -> int:
    from dncml.trainers.data.benchmarks import check_dataset, pack_dataset

    started = time.perf_counter()
    manifest = pack_dataset(args.name, args.root, args.out, shard_bytes=int(args.shard_mb * 2**20), progress=True)
    total = sum(shard["bytes"] for shard in manifest["shards"])
    print(
        f"packed {manifest['images']} image files ({total / 2**20:.1f} MiB) of {args.name} into "
        f"{len(manifest['shards'])} shard(s) at {args.out} in {time.perf_counter() - started:.1f} s; train with data_root: {args.out}"
    )
    _print_summary(check_dataset(args.name, args.out)["splits"])
    return 0


def _print_shape(bundle, args) -> None:
    """The SOP-shaped testbed's figures (the criteria it was chosen by), after carving the
    validation classes as a run does, and the images per second a training step runs at."""
    from dncml.trainers.data.base import carve_validation
    from dncml.trainers.data.glyph_families import shape, training_speed

    bundle.train, val = carve_validation(bundle.train, args.val_fraction, args.seed)
    _print_summary({**bundle.summary(), "val": {"images": len(val), "classes": val.num_classes}})
    figures = shape(bundle, batch_size=args.batch_size, epochs=args.epochs)
    print(
        f"training classes {figures['train_classes']} (after val_fraction {args.val_fraction}), "
        f"{figures['images_per_class']:.1f} images per class, {figures['groups']} groups, "
        f"{figures['test_classes']} test classes (disjoint code points)"
    )
    for k, classes in figures["classes_per_learner"].items():
        print(
            f"K = {k}: {classes:.0f} training classes per learner; batch {args.batch_size}: "
            f"{figures['steps_per_epoch']} steps an epoch, {figures['steps_per_learner'][k]:.0f} steps per learner in {args.epochs} epochs"
        )
    if not args.no_speed:
        print(f"training speed: {training_speed(bundle, args.batch_size):.0f} images/s (GlyphNet, margin loss, one thread)")


def cmd_datasets_show(args) -> int:
    from dncml.trainers.data.preview import save_grid

    if args.name in EMBEDDED:
        bundle = _embedded_bundle(args)
    else:
        if not args.root:
            raise UsageError(f"dncml datasets show {args.name} needs --root DIR")
        from dncml.trainers.data.benchmarks import read_benchmark

        bundle = read_benchmark(args.name, args.root)
    data = bundle.train if args.split == "train" else bundle.tests[0].query
    out = save_grid(
        data, args.out, classes=args.rows, per_class=args.per_class, group_names=bundle.group_names, class_names=bundle.class_names
    )
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------- pretrain
def cmd_pretrain(args) -> int:
    import json
    import shutil
    import tempfile

    from dncml.trainers.pretrain import PROVENANCE, WEIGHTS, PretrainConfig, pretrained_dir, pretrained_glyphnet, shipped_weights

    config = PretrainConfig(epochs=args.epochs, image_size=args.image_size, seed=args.seed)
    shipped = shipped_weights(config)
    with tempfile.TemporaryDirectory(prefix="dncml-pretrain-") as scratch:
        if args.from_scratch:  # trained here, in a scratch cache: the user's cache stays as it is
            path = pretrained_glyphnet(config, cache_dir=Path(scratch), progress=True, shipped=False)
            done = "pre-trained from scratch (not cached)"
        else:
            cached = (pretrained_dir(config) / WEIGHTS).is_file()
            path = pretrained_glyphnet(config, progress=True)
            done = "already in the cache" if cached else "cached"
        provenance = json.loads((path.parent / PROVENANCE).read_text())
        print(f"GlyphNet {done}: {path if not args.from_scratch else '(scratch)'}")
        print(
            f"  {provenance['classes']} classes ({provenance['images']} images) outside the glyphs train and test "
            f"splits, {config.epochs} epochs, held-out accuracy {provenance['held_out_accuracy']:.3f}; "
            f"{provenance.get('source', 'trained here')}"
        )
        print(f"  sha256 {provenance['sha256']}")
        if args.from_scratch and shipped is not None:
            same = provenance["sha256"] == shipped[1]["sha256"]
            print(
                "  the same bytes as the weights shipped with dncml"
                if same
                else "  not the bytes shipped with dncml: float reductions differ between machines and thread counts "
                f"(shipped: torch {shipped[1]['torch']}, {shipped[1]['torch_threads']} threads; here: "
                f"torch {provenance['torch']}, {provenance['torch_threads']} threads)"
            )
        if args.out:
            shutil.copyfile(path, args.out)
            print(f"  copied to {args.out} (use it as `pretrained: {args.out}`)")
    return 0


# ------------------------------------------------------------------------------------- train
def _load_spec(args):
    from dncml.trainers import spec as runspec

    overrides = runspec.parse_overrides(args.set or [])
    return runspec.load(args.runspec, overrides) if args.runspec else runspec.from_dict({}, overrides)


def cmd_train(args) -> int:
    if args.help_spec:
        from dncml.trainers.spec import ALIASES, field_help

        aliases = {field: alias for alias, field in ALIASES.items()}
        for name, text in field_help().items():
            print(f"{name + (f' ({aliases[name]})' if name in aliases else ''):<28} {text}")
        return 0
    if not args.runspec and not args.set:
        raise UsageError(
            "dncml train needs a RunSpec YAML (e.g. experiments/runs/glyphs_smoke.yaml) or --set "
            "field=value to train the defaults; `dncml train --help-spec` lists the fields"
        )
    spec = _load_spec(args)
    if args.local:
        from dncml.platform.local import train_local

        train_local(
            spec, run_dir=args.run_dir, storage=args.storage, sweep=args.sweep or "train", resume=args.resume, setting=_setting(args)
        )
        return 0
    from dncml.platform.train import train_on_ray

    train_on_ray(
        spec,
        num_workers=args.num_workers,
        use_gpu=args.use_gpu,
        address=args.address,
        storage=args.storage,
        resume=args.resume,
        setting=_setting(args),
    )
    return 0


def _setting(args) -> str:
    """A run's `setting` in the store (and `dncml status`): its `--set` assignments."""
    return ",".join(item.replace(" ", "") for item in args.set or [])


def cmd_embed(args) -> int:
    import tempfile

    from dncml.platform.store import write_embeddings
    from dncml.trainers.embedding import embed_checkpoint

    with tempfile.TemporaryDirectory(prefix="dncml-checkpoint-") as scratch:
        checkpoint = _checkpoint_of(args, "embed", scratch)
        split, vectors = embed_checkpoint(checkpoint, args.split)
    out = write_embeddings(args.out, split, vectors)
    print(f"wrote {len(vectors)} embeddings of dimension {vectors.shape[1]} ({args.split}) to {out}")
    return 0


def cmd_retrievals(args) -> int:
    import tempfile

    from dncml.trainers.data.preview import save_retrievals
    from dncml.trainers.embedding import embed_checkpoint

    with tempfile.TemporaryDirectory(prefix="dncml-checkpoint-") as scratch:
        split, vectors = embed_checkpoint(_checkpoint_of(args, "retrievals", scratch), args.split)
    out, right = save_retrievals(split, vectors, args.out, queries=args.queries, k=args.k)
    print(f"wrote {out}: {args.queries} {args.split} queries and their {args.k} nearest neighbours, {right:.0%} of them right")
    return 0


def _checkpoint_of(args, command: str, scratch: str) -> str:
    """A CHECKPOINT directory given, or `--trial ID`'s validation-selected one (from a bucket:
    copied into `scratch` first)."""
    if args.trial:
        from dncml.platform.store import ResultsStore

        store = ResultsStore(args.storage)
        checkpoint = store.selected_checkpoint(args.sweep, args.trial)
        print(f"trial {args.trial}: the validation-selected checkpoint {checkpoint}")
        return store.local_checkpoint(checkpoint, scratch)
    if not args.checkpoint:
        raise UsageError(f"dncml {command} needs a CHECKPOINT directory, or --trial ID (with --storage and --sweep)")
    return args.checkpoint


# ----------------------------------------------------------------------------- sweep, table
def cmd_sweep(args) -> int:
    from dncml.experiments.loader import load_experiment

    experiment = load_experiment(args.spec, args.preset, args.set)  # a bad spec fails here, before Ray is imported
    from dncml.platform.sweep import run_sweep

    sweep, summary = run_sweep(
        experiment,  # loaded once: the sweep runs this object
        overrides=args.set,
        preset=args.preset,
        address=args.address,
        storage=args.storage,
        resume=args.resume,
        max_concurrent=args.max_concurrent,
        mlflow_uri=args.mlflow,
        sweep_id=args.sweep,
        optuna_storage=args.optuna_storage,
    )
    if summary.get("interrupted sweep"):
        from dncml.platform.console import interrupted_exit_code

        return interrupted_exit_code()  # as a shell reports a process ended by Ctrl-C (130) or SIGTERM (143)
    if summary.get("completed"):
        from dncml.analysis.tables import render_table

        print()
        print(render_table(args.storage, experiment.name, fmt="md", sweep=sweep))
    return 0 if not (summary.get("failed") or summary.get("stopped early")) else 1


def cmd_status(args) -> int:
    from dncml.analysis.status import render_status

    print(render_status(args.store, sweep=args.sweep))
    return 0


def cmd_table(args) -> int:
    from dncml.analysis.tables import table_with_caption

    text, caption = table_with_caption(
        args.store, args.experiment, fmt=args.format, metrics=args.metric, sweep=args.sweep, include_running=args.include_running
    )
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
        if args.format == "csv":  # the CSV holds the numbers only; its caption goes beside it
            beside = caption_path(args.out)
            beside.write_text(caption + "\n")
            print(f"wrote {beside} (its caption)")
    else:
        print(text)
        if args.format == "csv":
            print(caption, file=sys.stderr)
    return 0


def caption_path(out: str | Path) -> Path:
    """Where a CSV table's caption goes: `table.csv` -> `table.caption.txt`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.caption.txt")


def cmd_plot(args) -> int:
    from dncml.analysis.plots import optuna_paths, plot_experiment

    out = plot_experiment(args.store, args.experiment, args.out, kind=args.kind, sweep=args.sweep, include_running=args.include_running)
    print(f"wrote {out}")
    for path in optuna_paths(args.out).values():
        if path.exists():
            print(f"wrote {path} (Optuna's own figure)")
    return 0


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        dncml_version = version("dncml")
    except PackageNotFoundError:
        dncml_version = "unknown"
    formatter = argparse.ArgumentDefaultsHelpFormatter  # every option's help shows its default
    parser = argparse.ArgumentParser(prog="dncml", description="Divide-and-conquer deep metric learning on Ray.", formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"dncml {dncml_version}")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="also show Ray's own logs (workers, Train, Tune)")
    loudness.add_argument("-q", "--quiet", action="store_true", help="show the outcome only")
    # -q / -v after the subcommand too (`dncml sweep spec.yaml -q`): SUPPRESS keeps the value
    # given before it when they are not repeated after it
    loud = argparse.ArgumentParser(add_help=False)
    after = loud.add_mutually_exclusive_group()
    after.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="also show Ray's own logs")
    after.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="show the outcome only")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str):
        return sub.add_parser(name, help=help, description=help, formatter_class=formatter, parents=[loud])

    datasets = command("datasets", "list, prepare, check and look at datasets")
    dsub = datasets.add_subparsers(dest="action", required=True)

    def action(name: str, help: str):
        return dsub.add_parser(name, help=help, description=help, formatter_class=formatter, parents=[loud])

    def glyph_options(p):
        p.add_argument("--cache-dir", help="default: $DNCML_CACHE or $XDG_CACHE_HOME/dncml or ~/.cache/dncml")
        p.add_argument("--classes", type=int, default=None, help="glyphs: number of classes (None: all)")
        p.add_argument("--instances", type=int, default=24, help="glyphs: images per class (multiple of 12)")
        p.add_argument("--image-size", type=int, default=32, help="glyphs: pixels")
        p.add_argument("--seed", type=int, default=0, help="glyphs: augmentation and split seed")

    p = action("list", "known datasets and where they are expected")
    p.add_argument("--cache-dir", help="default: $DNCML_CACHE or $XDG_CACHE_HOME/dncml or ~/.cache/dncml")
    p.set_defaults(func=cmd_datasets_list)
    p = action("prepare", "render and cache the embedded glyphs dataset")
    p.add_argument("name", help=f"{' or '.join(EMBEDDED)} (the embedded datasets; the others are read from their archives)")
    glyph_options(p)
    p.set_defaults(func=cmd_datasets_prepare)
    p = action("check", "validate a dataset directory; print counts per split")
    p.add_argument("name", help=", ".join(DATASETS.names()))
    p.add_argument("--root", help="the unpacked archive (or, for folder, ROOT/<class>/<images>)")
    p.add_argument("--verify-images", action="store_true", help="decode every image fully (slow)")
    p.add_argument("--batch-size", type=int, default=32, help="glyph_families: the batch its step figures assume")
    p.add_argument("--epochs", type=int, default=16, help="glyph_families: the budget its step figures assume")
    p.add_argument("--val-fraction", type=float, default=0.15, help="glyph_families: validation classes carved, as a run does")
    p.add_argument("--no-speed", action="store_true", help="glyph_families: skip measuring the training speed")
    glyph_options(p)
    p.set_defaults(func=cmd_datasets_check)
    p = action("pack", "copy a photo dataset's image files into a few large shards with an index (data_root may point at it)")
    p.add_argument("name", help=", ".join(WITH_ROOT))
    p.add_argument("--root", required=True, help="the unpacked archive")
    p.add_argument("--out", required=True, help="the pack's directory (new or empty)")
    p.add_argument("--shard-mb", type=float, default=1024, help="the largest shard, in MiB")
    p.set_defaults(func=cmd_datasets_pack)
    p = action("show", "write a grid of sample images per class (PNG, PDF or SVG by the extension)")
    p.add_argument("name", help=", ".join(DATASETS.names()))
    p.add_argument("--root", help=f"the unpacked archive (not for {', '.join(EMBEDDED)})")
    p.add_argument("--out", required=True, help="the image file to write")
    p.add_argument("--split", choices=("train", "test"), default="train", help="which split")
    p.add_argument("--rows", type=int, default=16, help="classes to show (one row each)")
    p.add_argument("--per-class", type=int, default=12, help="images per class")
    glyph_options(p)
    p.set_defaults(func=cmd_datasets_show)

    p = command("pretrain", "pre-train GlyphNet on glyph classes outside train and test (`pretrained: glyphs`)")
    p.add_argument("backbone", choices=["glyphnet"], help="the backbone to pre-train")
    p.add_argument("--epochs", type=int, default=6, help="classification epochs")
    p.add_argument("--image-size", type=int, default=32, help="pixels (the glyphs default)")
    p.add_argument("--seed", type=int, default=0, help="render and training seed")
    p.add_argument("--out", default=None, help="also copy the weights file here")
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="train it here (minutes), in a scratch directory, and say whether the bytes match the copy shipped with dncml",
    )
    p.set_defaults(func=cmd_pretrain)

    p = command("train", "one divide-and-conquer run (Ray Train, or --local in this process)")
    p.add_argument("runspec", nargs="?", help="RunSpec YAML (e.g. experiments/runs/glyphs_smoke.yaml); `--set` alone trains the defaults")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a RunSpec field (K, T, m, d aliases)")
    p.add_argument("--local", action="store_true", help="run in this process without Ray")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per Ray Train worker")
    p.add_argument("--address", default=None, help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (None: $RAY_ADDRESS, else a local Ray)")
    p.add_argument(
        "--storage", default=None, help="results store: a directory or s3://BUCKET/PREFIX (None: ./results for Ray runs, none for --local)"
    )
    p.add_argument("--sweep", default=None, help="results-store sub-directory for the run (None: train)")
    p.add_argument("--run-dir", default=None, help="--local: where checkpoints go (None: a new runs/NAME-DATE-TIME-HEX)")
    p.add_argument("--resume", action="store_true", help="continue the newest run of this name (same spec) from its newest checkpoint")
    p.add_argument("--help-spec", action="store_true", help="list every RunSpec field with its type, default and allowed values")
    p.set_defaults(func=cmd_train)

    p = command("embed", "export a checkpoint's embeddings and labels to Parquet")
    _checkpoint_arguments(p, split_help="which split to embed")
    p.add_argument("--out", required=True, help="the Parquet file to write")
    p.set_defaults(func=cmd_embed)

    p = command("retrievals", "a PNG grid of queries and their nearest neighbours (right: green, wrong: red)")
    _checkpoint_arguments(p, split_help="where queries and neighbours come from")
    p.add_argument("--queries", type=int, default=8, help="queries (rows), of distinct classes")
    p.add_argument("--k", type=int, default=5, help="neighbours per query")
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.set_defaults(func=cmd_retrievals)

    p = command("sweep", "run an experiment spec as a Ray Tune sweep")
    p.add_argument("spec", help="experiment YAML (experiments/*.yaml) or a shipped experiment's name")
    p.add_argument("--preset", default=None, help="smoke, quick or paper (None: the spec's default)")
    p.add_argument(
        "--set",
        action="append",
        metavar="run.FIELD=VALUE|grid.AXIS=[...]",
        help="over the preset: a field of every run (run.K=8), or a grid axis (grid.seed=[0,1,2])",
    )
    p.add_argument("--address", default=None, help="Ray cluster (None: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage", default="results", help="results store: a directory or a URI such as s3://BUCKET/PREFIX")
    p.add_argument("--resume", action="store_true", help="continue the newest interrupted sweep of this experiment")
    p.add_argument("--sweep", default=None, metavar="ID", help="with --resume: the sweep to continue (None: the newest of this experiment)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (None: as many as the cluster fits)")
    p.add_argument("--mlflow", default=None, metavar="URI", help="also log every trial to MLflow (e.g. sqlite:///mlflow.db)")
    p.add_argument(
        "--optuna-storage",
        default=None,
        metavar="URL",
        help="a search's Optuna study in this RDB (None: SQLite in the store, or on this machine's disk and copied into a bucket)",
    )
    p.set_defaults(func=cmd_sweep)

    p = command("status", "sweeps and runs in a results store: state, epochs, best metric so far, ETA")
    p.add_argument("store", nargs="?", default="results", help="the results store")
    p.add_argument("--sweep", default="all", help="a sweep id, latest (the newest) or all")
    p.set_defaults(func=cmd_status)

    p = command("table", "an experiment's table from the results store")
    p.add_argument("store", help="the results store")
    p.add_argument("--experiment", default=None, help="the experiment's name (None: the store's only one, or --sweep's)")
    p.add_argument("--sweep", default="latest", help="a sweep id, latest (the experiment's newest) or all (every sweep of its preset)")
    p.add_argument("--format", choices=("md", "latex", "html", "csv"), default="md", help="output format")
    p.add_argument("--metric", action="append", help="metric column(s) (None: the experiment's)")
    p.add_argument("--include-running", action="store_true", help="also running / interrupted trials (rows marked partial)")
    p.add_argument("--out", help="write to this file instead of printing")
    p.set_defaults(func=cmd_table)

    p = command("plot", "an experiment's figure from the results store")
    p.add_argument("store", help="the results store")
    p.add_argument("--experiment", default=None, help="the experiment's name (None: the store's only one, or --sweep's)")
    p.add_argument("--sweep", default="latest", help="a sweep id, latest (the experiment's newest) or all (every sweep of its preset)")
    p.add_argument("--out", required=True, help="the figure file; its extension names the format (.png, .pdf, .svg)")
    p.add_argument("--kind", default=None, help="curves | clusters | metric_vs | bars | search | budget (None: the experiment's)")
    p.add_argument("--include-running", action="store_true", help="also running / interrupted trials")
    p.set_defaults(func=cmd_plot)
    return parser


def _checkpoint_arguments(p, split_help: str) -> None:
    """The arguments of a command that reads one checkpoint (`_checkpoint_of`): a directory, or
    `--trial ID` of a results store; and the split it reads."""
    p.add_argument("checkpoint", nargs="?", help="a checkpoint directory (holds state.pt and spec.yaml), e.g. runs/NAME/checkpoints/best")
    p.add_argument("--trial", default=None, help="instead: a trial id of the results store; its validation-selected checkpoint")
    p.add_argument("--storage", default="results", help="with --trial: the results store (a directory or s3://BUCKET/PREFIX)")
    p.add_argument("--sweep", default="train", help="with --trial: its sweep id (train: where `dncml train` records)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help=split_help)


def _starts_local_ray(args) -> bool:
    """Whether the command starts a private local Ray (no cluster named by --address or RAY_ADDRESS)."""
    if args.command not in ("sweep", "train") or getattr(args, "local", False) or getattr(args, "help_spec", False):
        return False
    address = args.address or os.environ.get("RAY_ADDRESS")
    return address in (None, "", "local")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    args = build_parser().parse_args(argv)
    from dncml.platform import console

    console.setup(console.VERBOSE if args.verbose else console.QUIET if args.quiet else console.NORMAL)
    console.handle_sigterm()
    if _starts_local_ray(args):
        os.environ.setdefault(*console.LOOPBACK_RAY_ENV)  # before ray is imported: the local Ray binds the loopback only
    try:
        return args.func(args)
    except BrokenPipeError:
        # `dncml status | head`: the reader left. Nothing more to say, and nothing at exit either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if args.command == "train":
            import shlex

            words = ["dncml", *(sys.argv[1:] if argv is None else argv)]
            print(f"resume it with:\n  {shlex.join(words + ([] if '--resume' in words else ['--resume']))}", file=sys.stderr)
        return console.interrupted_exit_code()
    except Exception as error:
        # One line, never a traceback (the whole trace with -v): exit 2 for input the user can
        # fix (a spec, a path, a name, a checkpoint refused), 1 for a run or a machine that failed
        # (a run's error, a full disk, a locked or corrupt database, memory).
        bad_input = isinstance(error, (ValueError, KeyError, *_user_errors()))
        if args.verbose:
            import traceback

            traceback.print_exc()
        text = str(error) if isinstance(error, _user_errors()) else f"{type(error).__name__}: {error}"
        print(f"error: {' '.join(text[:2000].split())}", file=sys.stderr)
        return 2 if bad_input else 1


if __name__ == "__main__":
    sys.exit(main())
