"""A run's identity in `run.json`: its config, release, method version, data root and split.

A resume must compute what the run started computing; `guard_run` refuses one that would not.
"""

from __future__ import annotations

import os
from typing import Any

from .. import __version__
from ..errors import ConfigError
from ..tables import RUN_FILE, Storage
from ..tasks import METHOD_VERSION
from . import config as sweep_config


def data_root(cfg: sweep_config.SweepConfig) -> str:
    """The workflow's data root as units see it: an absolute path."""
    return os.path.abspath(cfg.data.root)


def check_root_kind(cfg: sweep_config.SweepConfig) -> None:
    """Refuse a data root that is a file: neither a dataset nor a place to render one."""
    root = data_root(cfg)
    if os.path.exists(root) and not os.path.isdir(root):
        raise ConfigError(f"the dataset root {root} is a file, not a folder: give --data (or "
                          "data.root) the folder that holds the buildings, or a new folder for "
                          "the workflow's render to write")


def guard_run(storage: Storage, cfg: sweep_config.SweepConfig, force: bool = False) -> None:
    """Write run.json, or check that an existing one has the same config (resume).

    Execution-only settings (resources, label memory, loader processes) may differ: they change
    how the remaining units run, not what the done ones computed, and run.json records the new.
    The building split the run trains on is recorded once the data is there, and checked too:
    buildings added to or removed from the root would move images between the splits under
    the same unit keys.
    """
    new: dict[str, Any] = {"config": cfg.to_json(), "version": __version__,
                           "data_root": data_root(cfg), "method": METHOD_VERSION}
    split = resolved_split(cfg)
    if split is not None:
        new["splits"] = split
    if storage.exists(RUN_FILE):
        old = storage.read_record(RUN_FILE, "config")
        was_method = old.get("method", 1)
        if was_method != METHOD_VERSION and not force:
            raise ConfigError(
                f"storage {storage.display} holds a run computed under method version "
                f"{was_method}; this taskonomy-ray computes version {METHOD_VERSION} (other "
                "labels, losses or encoder inputs; taskonomy_ray/tasks.py METHOD_VERSION), so "
                "its results cannot be mixed. Finish it with the release that started it "
                f"({old.get('version', 'unknown')}), start a new run with another --storage, or "
                "pass --force-config to recompute every unit here under the new version "
                "(nothing stored is deleted)")
        was = old.get("data_root", new["data_root"])
        if was != new["data_root"] and not force:
            # Unit keys hold data.root as written: a relative root read from another directory
            # would silently be another (or no) dataset under the same keys.
            raise ConfigError(f"storage {storage.display} holds a run on the data root {was}; "
                              f"data.root {cfg.data.root!r} now resolves to {new['data_root']}. "
                              + _moved_root_advice(_written_root(old), cfg.data.root, was,
                                                   new["data_root"]))
        if was_method == METHOD_VERSION:  # the release that started it, unless recomputed
            new["version"] = old.get("version", new["version"])
        if split is None and "splits" in old:
            new["splits"] = old["splits"]  # the data is not there yet (a render to redo)
        if new == old:
            return
        changes = sweep_config.diff(old.get("config", {}), new["config"],
                                    skip=sweep_config.EXECUTION_ONLY_SETTINGS)
        if changes and not force:
            raise ConfigError(
                f"storage {storage.display} holds a run with another config; differences:\n  "
                + "\n  ".join(changes)
                + "\nUse another --storage for a new run, restore the old settings to resume, "
                "or pass --force-config to resume with the new one (units whose keys change "
                "are recomputed)."
            )
        moved = split_changes(old.get("splits"), split)
        if moved and not force:  # the same config: the root's buildings changed
            raise ConfigError(
                f"the building split of {new['data_root']} is not the one storage "
                f"{storage.display} was trained on ({'; '.join(moved)}): buildings were added "
                "to or removed from the root, so done units and new ones would see different "
                "splits. Restore the root's buildings, or start a new run with another "
                "--storage (or fix the split with data.split_file); --force-config continues "
                "anyway, keeping what was done on the old split")
    storage.write_json(RUN_FILE, new)


def resolved_split(cfg: sweep_config.SweepConfig) -> dict[str, list[str]] | None:
    """The buildings of each split as the units will see them; None while unknown.

    Unknown: no data in the root yet, or the workflow's render has not finished.
    """
    from ..errors import DataError
    from ..layout import buildings
    from ..splits import split_buildings
    from .units import render_config, splits

    root = data_root(cfg)
    if not os.path.isdir(root):
        return None
    if cfg.data.render is not None:
        from ..render.synth import render_state

        if render_state(render_config(cfg, root))[0] != "complete":
            return None
    try:
        found = buildings(root)
        return split_buildings(found, splits(cfg)) if found else None
    except DataError:  # too few buildings, a listed split missing: the units say so, in full
        return None


def split_changes(old: dict[str, list[str]] | None, new: dict[str, list[str]] | None
                  ) -> list[str]:
    """`train: +b7 -b2`-style differences between two recorded splits (none if one is unknown)."""
    if old is None or new is None:
        return []
    out = []
    for s in sorted(set(old) | set(new)):
        a, b = set(old.get(s, [])), set(new.get(s, []))
        if a != b:
            delta = [f"+{x}" for x in sorted(b - a)[:3]] + [f"-{x}" for x in sorted(a - b)[:3]]
            more = len(a ^ b) - len(delta)
            out.append(f"{s}: {' '.join(delta)}" + (f" and {more} more" if more > 0 else ""))
    return out


def _moved_root_advice(written: str | None, now: str, was: str, resolved: str) -> str:
    """How to resume on a data root that resolves elsewhere, keeping what is done.

    Unit keys hold data.root as written: the same words from another directory keep them, a
    different root (an absolute --data for a relative root among them) changes every key.
    """
    if written == now:
        return ("Run from the directory the run started in; if the data is the same dataset, "
                "moved, pass --force-config to continue with it (unit keys hold data.root as "
                "written, which is unchanged: everything done is kept)")
    where = (f"run from the directory the run started in with data.root {written!r} and no "
             "--data" if written and not os.path.isabs(written) else f"pass --data {written}")
    return (f"To keep everything done, {where} (unit keys hold data.root as written); if the "
            f"data moved, first link its old path to it (`ln -s {resolved} {was}`, with {was} "
            "gone). --force-config would continue on the new root, but every unit would run "
            "again")


def _written_root(run: dict[str, Any]) -> str | None:
    """The data root as the stored run's config wrote it (what its unit keys hold)."""
    data = run["config"].get("data") if isinstance(run["config"], dict) else None
    return data.get("root") if isinstance(data, dict) else None


def record_split(storage: Storage, cfg: sweep_config.SweepConfig) -> None:
    """After the render: record the split the run trains on, if run.json lacks it."""
    run = storage.read_record(RUN_FILE, "config")
    split = resolved_split(cfg)
    if "splits" not in run and split is not None:
        storage.write_json(RUN_FILE, {**run, "splits": split})
