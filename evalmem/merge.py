"""`evalmem merge`: combine a run computed in parts (`--shard I/N`) into the standard result.

Parts that write into the same directory need no merge: the part that finishes last writes the results.
Parts computed into other directories (other machines) are merged: every part directory must hold a run
with exactly OUT's settings; valid shards are copied into OUT/shards, then results and summary are written
exactly as an unsharded run writes them. A shard that no part holds, or holds damaged, is named (with the
part that computes it) and nothing that looks complete is written.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
from pathlib import Path

from evalmem.errors import InputError
from evalmem.runner import finish, missing_parts
from evalmem.store import RunDir, settings_diff, write_atomic, write_json

COMMANDS = {"extract": ("evalmem.extraction", "results.parquet"),
            "generate": ("evalmem.generation", "results.parquet"),
            "features": ("evalmem.features", "features.parquet")}


def read_manifest(path: Path) -> dict | None:
    """A run directory's manifest, None where it has none; a one-line error where it is unreadable."""
    manifest = path / "manifest.json"
    if not manifest.exists():
        return None
    try:
        found = json.loads(manifest.read_text())
        if "command" in found["settings"]:
            return found
    except (ValueError, KeyError, TypeError):
        pass
    raise InputError(f"{manifest} is unreadable")


def merge_run(out: str, parts: list[str]) -> dict:
    """Copy the valid shards of `parts` into `out` and write its results; return its summary."""
    out_path = Path(out)
    part_paths = [Path(p) for p in parts if Path(p).resolve() != out_path.resolve()]
    manifests = {}
    for path in [out_path, *part_paths]:
        if not path.is_dir() and path != out_path:
            raise InputError(f"no such run directory: {path}")
        manifests[path] = read_manifest(path)
        if manifests[path] is None and path != out_path:
            raise InputError(f"{path} is not a run directory (no manifest.json)")
    first = manifests[out_path] or (manifests[part_paths[0]] if part_paths else None)
    if first is None:
        raise InputError(f"{out_path} is not a run directory (no manifest.json); name the part directories to merge")
    settings = first["settings"]
    for path, manifest in manifests.items():
        if manifest is not None and manifest["settings"] != settings:
            diff = settings_diff(manifest["settings"], settings)
            raise InputError(f"{path} holds a run with other settings than {out_path} ({', '.join(diff)}); "
                             "only parts of the same run can be merged")
    if settings["command"] not in COMMANDS:
        raise InputError(f"cannot merge runs of command {settings['command']!r}")
    module, results = COMMANDS[settings["command"]]
    run = RunDir(out_path, settings, results)
    run.open()
    if manifests[out_path] is None:
        write_json(out_path / "manifest.json", first)  # the versions of the machine that computed the first part
    if run.is_complete():
        return run.read_summary()
    problems = collect(run, part_paths)
    metas = [run.shard_meta(i) for i in range(count(run))]
    missing = [i for i, meta in enumerate(metas) if meta is None]
    if missing:
        why = {i: problems.get(i) or run.check_shard(run.shard_path(i))[1] for i in missing}
        parts_needed = missing_parts(missing, metas)
        raise InputError(
            f"cannot merge {out_path}: {len(missing)} of {len(metas)} shards missing or damaged: "
            + ", ".join(f"{i:05d} ({why[i]})" for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
            + (f"; rerun part {', '.join(parts_needed)} (--shard) and merge again" if parts_needed else ""))
    return finish(run, metas, importlib.import_module(module).summarize, None)


def collect(run: RunDir, parts: list[Path]) -> dict[int, str]:
    """Copy every valid shard of `parts` that `run` lacks into it; return why a shard still lacking is
    unusable where some part holds a file for it ("damaged in DIR", "made with other settings in DIR")."""
    problems = {}
    for part in parts:
        for path in sorted((part / "shards").glob("*.parquet")):
            if not path.stem.isdigit() or run.shard_meta(int(path.stem)) is not None:
                continue
            meta, why = run.check_shard(path)
            if meta is None:
                problems[int(path.stem)] = f"{why} in {part}"
            else:
                write_atomic(run.shard_path(int(path.stem)), lambda tmp: shutil.copyfile(path, tmp))
                problems.pop(int(path.stem), None)
    return problems


def count(run: RunDir) -> int:
    """The run's number of shards, read from any valid shard's footer."""
    for path in sorted(run.shards.glob("*.parquet")):
        meta, _ = run.check_shard(path)
        if meta is not None:
            return math.ceil(meta["n_input_rows"] / run.settings["shard_size"])
    raise InputError(f"no valid shard of {run.path} found in it or the parts named; nothing to merge")
