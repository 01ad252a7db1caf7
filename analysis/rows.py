"""Reading the store's Parquet files, shared by the writer (`dncml.platform.store`) and every
reader (`dncml.analysis`) beside the format itself (`schema`): pyarrow only.

`read_rows` reads a directory's files with one `pyarrow.dataset` scan (schemas unified: missing
columns null, int64 + double -> double), leaves out a file it cannot read with a warning naming
it, and keeps one row per key: the copy in the file of the highest `schema.file_rank` (a trial's
own file over a segment, a per-epoch file over the compacted one), the later file among equals.
So a reader sees the same rows whether or not the driver has merged ended trials into segments,
and a merge cut short (both copies present) changes nothing. Rows come sorted by their key.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .schema import file_rank

FILENAME = "__filename"  # the column pyarrow.dataset fills with each row's file
# Footers read side by side: Arrow's own dataset inspection reads them one after another, one
# round trip each on a bucket.
FOOTER_THREADS = 16


def read_rows(
    filesystem: pafs.FileSystem,
    paths: Sequence[str],
    keys: Sequence[str],
    columns: Sequence[str] | None = None,
    skipped: list[str] | None = None,
    where: Callable[[str], str] = str,
    row_filter: pc.Expression | None = None,
) -> pa.Table | None:
    """The files' rows as one table, one row per `keys` (see the module), sorted by them; None
    when there is no file. `columns`: only those that exist (the keys are always read);
    `row_filter`: only the rows it keeps. A file that cannot be read is left out with a warning,
    and "where(path): error" appended to `skipped`."""
    if not paths:
        return None
    wanted = None if columns is None else list(dict.fromkeys([*keys, *columns]))
    try:
        table = _scan(filesystem, list(paths), wanted, row_filter)
    except (OSError, pa.ArrowException):
        table = _one_by_one(filesystem, list(paths), wanted, row_filter, skipped, where)
        if table is None:
            return None
    table = keep_newest(table, [k for k in keys if k in table.column_names])
    return table.drop_columns([FILENAME])


def _scan(filesystem: pafs.FileSystem, paths: list[str], columns: list[str] | None, row_filter) -> pa.Table:
    with ThreadPoolExecutor(min(FOOTER_THREADS, len(paths))) as pool:
        schemas = list(pool.map(lambda path: pq.read_schema(path, filesystem=filesystem), paths))
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    names = schema.names if columns is None else [c for c in schema.names if c in set(columns)]
    dataset = pads.FileSystemDataset.from_paths(paths, schema=schema, format=pads.ParquetFileFormat(), filesystem=filesystem)
    return dataset.to_table(columns=[*names, FILENAME], filter=row_filter)


def _one_by_one(filesystem, paths, columns, row_filter, skipped, where) -> pa.Table | None:
    tables = []
    for path in paths:
        try:
            table = pq.read_table(path, filesystem=filesystem, filters=row_filter)
        except (OSError, pa.ArrowException) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            note = f"{where(path)}: {first}"
            warnings.warn(f"skipped unreadable Parquet file {note}", stacklevel=4)
            if skipped is not None:
                skipped.append(note)
            continue
        if columns is not None:
            table = table.select([c for c in table.column_names if c in set(columns)])
        tables.append(table.append_column(FILENAME, pa.array([path] * len(table), pa.string())))
    return _concat(tables) if tables else None


def _concat(tables: list[pa.Table]) -> pa.Table:
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # Columns whose types cannot be promoted (a string in one file, a number in another):
        # held as text, as written.
        types: dict[str, set] = {}
        for table in tables:
            for field in table.schema:
                types.setdefault(field.name, set()).add(field.type)
        mixed = {name for name, kinds in types.items() if len(kinds) > 1}
        texts = [pa.table({c: (pc.cast(t[c], pa.string()) if c in mixed else t[c]) for c in t.column_names}) for t in tables]
        return pa.concat_tables(texts, promote_options="permissive")


def keep_newest(table: pa.Table, keys: list[str]) -> pa.Table:
    """One row per `keys`: the one in the file of the highest rank, the later among equals;
    sorted by `keys` (the table needs its `__filename` column)."""
    if not keys or table.num_rows == 0:
        return table
    files = pc.unique(table[FILENAME])
    ranks = pa.array([file_rank(name.rsplit("/", 1)[-1]) for name in files.to_pylist()], pa.int64())
    rank = np.asarray(pc.take(ranks, pc.index_in(table[FILENAME], value_set=files)))
    rows = table.num_rows
    score = rank * rows + np.arange(rows)  # the highest rank first, then the later row
    best = pa.table({**{k: table[k] for k in keys}, "score": score}).group_by(keys, use_threads=False).aggregate([("score", "max")])
    kept = table.take(pa.array(np.sort(np.asarray(best["score_max"]) % rows)))
    return kept.sort_by([(k, "ascending") for k in keys])
