"""A packed photo dataset: every image file's bytes in a few large shard files, read with mmap.

`dncml datasets pack NAME --root DIR --out DIR` writes one (what FFCV does for nodes with slow
disks or many small files); `data_root` may then point at the pack instead of the unpacked
archive, on either data path. A pack is a directory holding

- `shard-00000.bin`, ...: the image files' bytes, concatenated, unchanged (JPEG stays JPEG);
- `index.parquet`: one row per image of every split: `split` ("train", "test/query",
  "test/gallery", ...), `key` (the file's path relative to the dataset root), `label`, `group`,
  `shard`, `offset`, `size` (an image listed in two splits is stored once);
- `pack.json`, written last (a pack without it is incomplete): the dataset's name, its Recall@K,
  evaluation sets and group names, and each shard's name and byte count.

Opening a pack checks every shard against its byte count and every index row against its shard,
so a truncated or missing shard is one DatasetError before any training. No pickle anywhere.
This module does not import torch.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import numpy as np

from dncml.trainers.data.base import DatasetBundle, DatasetError, EvalSet, ImageSplit, check_files_exist

MANIFEST = "pack.json"
INDEX = "index.parquet"
FORMAT = "dncml-pack-1"
SHARD_BYTES = 1 << 30  # 1 GiB a shard: SOP (about 3 GB of JPEGs) packs into 3-4 files

__all__ = ["PackedImages", "is_pack", "pack_bundle", "read_pack", "validate_pack"]


def is_pack(root: str | os.PathLike) -> bool:
    return (Path(os.path.expanduser(os.fspath(root))) / MANIFEST).is_file()


def _split_rows(bundle: DatasetBundle) -> list[tuple[str, ImageSplit]]:
    rows = [("train", bundle.train)]
    for test in bundle.tests:
        rows.append((f"{test.name}/query", test.query))
        if test.gallery is not None:
            rows.append((f"{test.name}/gallery", test.gallery))
    return rows


def pack_bundle(
    bundle: DatasetBundle, root: str | os.PathLike, out: str | os.PathLike, shard_bytes: int = SHARD_BYTES, progress: bool = False
) -> dict:
    """Write the bundle's image files (read from under root) into a pack at out; returns its manifest.

    out must be empty or not exist. The files are stat'ed first (`check_files_exist`), then
    copied byte for byte, in split order, into shards of at most shard_bytes each (a file larger
    than that gets a shard of its own)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    out = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"pack output {out} exists and is not an empty directory")
    rows = _split_rows(bundle)
    distinct = list(dict.fromkeys(p for _, split in rows for p in split.paths))
    check_files_exist(distinct)
    out.mkdir(parents=True, exist_ok=True)
    # plan the shards from the file sizes, then write each shard in one go
    planned: list[list[str]] = []
    filled = shard_bytes
    for path in distinct:
        size = os.stat(path).st_size
        if filled and filled + size > shard_bytes:
            planned.append([])
            filled = 0
        planned[-1].append(path)
        filled += size
    where: dict[str, tuple[int, int, int]] = {}
    shards: list[dict] = []
    bar = tqdm(total=len(distinct), desc="packing images", unit="img", disable=not progress)
    for number, members in enumerate(planned):
        shards.append({"file": f"shard-{number:05d}.bin", "bytes": 0})
        with open(out / shards[-1]["file"], "wb") as handle:
            for path in members:
                with open(path, "rb") as source:
                    data = source.read()
                handle.write(data)
                where[path] = (number, shards[-1]["bytes"], len(data))
                shards[-1]["bytes"] += len(data)
                bar.update()
    bar.close()
    columns: dict[str, list] = {k: [] for k in ("split", "key", "label", "group", "shard", "offset", "size")}
    for name, split in rows:
        for path, label, group in zip(split.paths, split.labels.tolist(), split.groups.tolist()):
            shard, offset, size = where[path]
            key = os.path.relpath(path, root)
            if key.startswith(".."):
                raise DatasetError(f"image {path} lies outside the dataset root {root}: cannot pack it")
            for column, value in zip(columns, (name, key, label, group, shard, offset, size)):
                columns[column].append(value)
    integers = [(c, pa.int64()) for c in ("label", "group", "shard", "offset", "size")]
    schema = pa.schema([("split", pa.string()), ("key", pa.string())] + integers)
    pq.write_table(pa.table(columns, schema=schema), out / INDEX)
    manifest = {
        "format": FORMAT,
        "dataset": bundle.name,
        "recall_ks": list(bundle.recall_ks),
        "channels": bundle.channels,
        "group_names": {str(k): v for k, v in bundle.group_names.items()},
        "tests": [{"name": t.name, "gallery": t.gallery is not None, "recall_ks": list(t.recall_ks)} for t in bundle.tests],
        "images": len(distinct),
        "shards": shards,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


class PackedImages:
    """The shards of one pack, opened lazily with mmap in each process that reads (pickles
    without its maps, so DataLoader workers and Ray workers reopen them)."""

    def __init__(self, root: Path, shards: list[dict], locations: dict[str, tuple[int, int, int]]):
        self.root, self.shards, self.locations = root, shards, locations
        self._maps: dict[int, mmap.mmap] = {}

    def __getstate__(self):
        return {**self.__dict__, "_maps": {}}

    def read(self, path: str) -> bytes:
        try:
            shard, offset, size = self.locations[path]
        except KeyError:
            raise DatasetError(f"missing image {path}: not in the pack at {self.root}") from None
        view = self._maps.get(shard)
        if view is None:
            with open(self.root / self.shards[shard]["file"], "rb") as handle:
                view = self._maps[shard] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return view[offset : offset + size]


def _manifest(root: Path) -> dict:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{root / MANIFEST}: not a readable pack manifest ({exc}); re-run dncml datasets pack") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise DatasetError(f"{root / MANIFEST}: format {found!r}, expected {FORMAT!r}")
    return manifest


def validate_pack(root: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray | list]]:
    """The manifest and index columns of the pack at root, after checking that every shard is
    there with its full byte count and every index row lies inside its shard (DatasetError else)."""
    import pyarrow.parquet as pq

    root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    manifest = _manifest(root)
    shards = manifest["shards"]
    for shard in shards:
        path = root / shard["file"]
        actual = path.stat().st_size if path.is_file() else None
        if actual != shard["bytes"]:
            state = "missing" if actual is None else f"{actual:,} bytes"
            raise DatasetError(
                f"pack shard {path} is {state}, the manifest says {shard['bytes']:,} bytes: a truncated or "
                "interrupted copy; copy the pack again or re-run dncml datasets pack"
            )
    try:
        table = pq.read_table(root / INDEX)
    except Exception as exc:  # a missing or damaged Parquet file
        raise DatasetError(f"{root / INDEX}: cannot read the pack index ({type(exc).__name__}: {exc})") from None
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    shard, offset, size = (columns[c].astype(np.int64) for c in ("shard", "offset", "size"))
    if len(shard) and (shard.min() < 0 or shard.max() >= len(shards)):
        raise DatasetError(f"{root / INDEX}: shard numbers outside 0..{len(shards) - 1}")
    ends = np.array([s["bytes"] for s in shards], dtype=np.int64)[shard] if len(shard) else shard
    bad = np.flatnonzero((offset < 0) | (size <= 0) | (offset + size > ends))
    if len(bad):
        raise DatasetError(f"{root / INDEX}: {len(bad)} rows point outside their shard, e.g. {columns['key'][bad[0]]}")
    return manifest, columns


def read_pack(root: str | os.PathLike, expected: str | None = None) -> DatasetBundle:
    """The DatasetBundle of a pack (validated as `validate_pack` does); expected: the dataset it must hold."""
    root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    manifest, columns = validate_pack(root)
    if expected is not None and manifest["dataset"] != expected:
        raise DatasetError(f"the pack at {root} holds dataset {manifest['dataset']!r}, not {expected!r}")
    paths = [str(root / key) for key in columns["key"]]
    locations = {p: (int(s), int(o), int(n)) for p, s, o, n in zip(paths, columns["shard"], columns["offset"], columns["size"])}
    pack = PackedImages(root, manifest["shards"], locations)
    split_names = np.asarray(columns["split"])

    def split(name: str, row: str) -> ImageSplit:
        rows = np.flatnonzero(split_names == row)
        if not len(rows):
            raise DatasetError(f"{root / INDEX}: no rows for split {row!r}")
        return ImageSplit(
            name=name,
            labels=columns["label"][rows],
            paths=[paths[i] for i in rows],
            groups=columns["group"][rows],
            pack=pack,
        )

    tests = []
    for test in manifest["tests"]:
        gallery = split("gallery", f"{test['name']}/gallery") if test["gallery"] else None
        tests.append(EvalSet(test["name"], split(test["name"], f"{test['name']}/query"), gallery, tuple(test["recall_ks"])))
    return DatasetBundle(
        name=manifest["dataset"],
        train=split("train", "train"),
        tests=tests,
        recall_ks=tuple(manifest["recall_ks"]),
        channels=int(manifest.get("channels", 3)),
        group_names={int(k): v for k, v in manifest["group_names"].items()},
    )
