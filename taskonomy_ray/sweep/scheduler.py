"""The sweep scheduler: which units are ready, and what a result or a failure changes.

A plain class with no Ray in it (tested by stepping it by hand); the Ray runner only submits what
`ready()` returns and reports back through `succeeded()` / `failed()`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError
from .plan import PRIORITY, STAGES, Unit, blocked_reason, losses_path

STATES = ("planned", "running", "done", "failed")
ABSENT = "absent"  # a barrier's input that had no result when it ran (`Scheduler.inputs_of`)


@dataclass(frozen=True)
class Version:
    """What a finished unit wrote and read: its outputs' digest, and its inputs' (by key)."""

    digest: str | None = None
    inputs: dict[str, str | None] = field(default_factory=dict)


def changed_inputs(read: Mapping[str, str | None], digests: Mapping[str, str | None]) -> list[str]:
    """The inputs whose digest now (`digests`) is not the one read; unknown ones are not judged."""
    return [d for d, seen in read.items()
            if seen is not None and digests.get(d) not in (None, seen)]


class Scheduler:
    """Tracks every unit's state; expands the plan when a unit's result adds work (beam search)."""

    def __init__(self, units: Iterable[Unit], *, is_done: Callable[[Unit], bool],
                 expand: Callable[[Unit], list[Unit]] | None = None, retries: int = 2,
                 node_losses: int = 8,
                 went_without: Callable[[Unit], Iterable[str]] | None = None,
                 version: Callable[[Unit], Version] | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        """`went_without(unit)`: the units an adopted unit's stored result lacks.

        (A transfer group's failed sources; for a beam, those of the group it ranked.)
        `version(unit)`: an adopted unit's stored `Version`; a unit whose inputs have changed
        since it ran is planned again (`warn` gets why).
        """
        self.units: dict[str, Unit] = {}
        self.state: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.tries: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()  # attempts cut short by a lost node, per unit
        # Done (or running) units that ran without some optional deps (they had failed): the
        # unit runs again once those succeed, in a later run.
        self.partial: dict[str, list[str]] = {}
        self.expanded: dict[str, list[str]] = {}  # unit key -> the keys its result added
        self.blocked: set[str] = set()  # failed without running: a failure left them nothing
        # The content digest of each done unit's outputs, and the digests of the inputs it read
        # (None: not known, e.g. a run of an older version): a dependent whose inputs changed
        # since (an input ran again, with another result) runs again.
        self.digest: dict[str, str | None] = {}
        self.read: dict[str, dict[str, str | None]] = {}
        self._version = version or (lambda unit: Version())
        self._usable_memo: dict[str, bool] = {}
        self._warn = warn or (lambda line: None)
        self.retries = retries
        self.node_losses = node_losses
        self._is_done = is_done
        self._expand = expand or (lambda unit: [])
        self._went_without = went_without or (lambda unit: ())
        self._add(list(units))

    def _add(self, units: list[Unit]) -> list[Unit]:
        new = [u for u in units if u.key not in self.units]
        for u in new:
            self.units[u.key] = u
            self.state[u.key] = "planned"
        for u in new:
            missing = [d for d in u.deps if d not in self.units]
            if missing:
                raise ConfigError(f"unit {u.key} depends on unplanned units {missing}")
        for u in new:  # adopt work finished by an earlier run (outputs already in storage)
            if self._is_done(u):
                self.state[u.key] = "done"
                v = self._version(u)
                self.digest[u.key], self.read[u.key] = v.digest, dict(v.inputs)
                # (Units no longer in the plan, e.g. a source dropped by --force-config, are
                # not waited for.)
                without = sorted(d for d in self._went_without(u) if d in self.units)
                if without:
                    self.partial[u.key] = without
                self._expand_from(u)
        for u in new:  # (after every new unit's digest is known: deps come in any order)
            if self.state[u.key] == "done":
                self._unless_changed(u.key)
        # A partial unit adopted with everything it lacked now done (a run that completed
        # those died before retraining it, or a beam's new ranking adds a group that went
        # without a source which has since succeeded): retrain it now.
        for u in new:
            lacks = self.partial.get(u.key, [])
            if lacks and self.state[u.key] == "done" and all(
                    self.state[d] == "done" for d in lacks):
                self._replan(u.key)
        return new

    def changed_inputs(self, key: str) -> list[str]:
        """The inputs of done unit `key` whose outputs differ from those it read."""
        return changed_inputs(self.read.get(key, {}), self.digest)

    def _unless_changed(self, key: str) -> None:
        """Plan done unit `key` again if an input it read has changed since.

        A barrier also runs again when the plan's units are not those it read (a config
        change, then a change back, can leave every unit adopted and the analysis of another
        plan in place); one with no record of what it read (an older run) is not judged.
        """
        if self.units[key].barrier and self.read.get(key):
            now = {k for k, u in self.units.items() if not u.barrier}
            added, gone = now - set(self.read[key]), set(self.read[key]) - now
            if added or gone:
                self._warn(f"{key} runs again: the plan has {len(added)} units it did not read "
                           f"and lacks {len(gone)} it read (the config changed since)")
                self.state[key] = "planned"
                return
        changed = self.changed_inputs(key)
        if changed:
            self._warn(f"{key} runs again: {changed[0]}"
                       + (f" (and {len(changed) - 1} more inputs)" if len(changed) > 1 else "")
                       + (" finished since" if self.read[key][changed[0]] == ABSENT
                          else " ran again since, with another result"))
            self.state[key] = "planned"
            self.partial.pop(key, None)

    def inputs_of(self, unit: Unit) -> dict[str, str | None]:
        """The digests of `unit`'s inputs as it starts (its ledger records what it read).

        A barrier (the analysis) reads every other unit's result, and notes the units that had
        none (`ABSENT`, they failed): if one of them finishes later, or another unit runs again
        with another result, and the driver dies before the barrier runs again, the next
        resume still plans it. A unit whose rerun failed still has its earlier result in
        storage, which the barrier reads: its digest is noted, not ABSENT.
        """
        if unit.barrier:
            return {k: (self.digest[k] if k in self.digest else ABSENT)
                    for k, u in self.units.items() if not u.barrier}
        return {d: self.digest.get(d) if self.state[d] == "done" else None for d in unit.deps}

    def _expand_from(self, unit: Unit) -> list[Unit]:
        """Add what `unit`'s result asks for; drop what only its earlier result asked for.

        (A beam ranked again on complete first-order results chooses other higher orders.)
        """
        units = self._expand(unit)
        keep = {u.key for u in units}
        for key in self.expanded.get(unit.key, []):
            if key not in keep and not any(key in u.deps for u in self.units.values()):
                for table in (self.units, self.state, self.errors, self.partial):
                    table.pop(key, None)
        self.expanded[unit.key] = sorted(keep)
        return self._add(units)

    def _usable(self, key: str) -> bool:
        """Done, not a partial result whose missing deps may still come in this run, and final.

        Final: every input usable or failed for good. A done unit with an input that will still
        run may be planned again when that input's new result differs (`_unless_changed`):
        whatever reads it waits rather than running twice. (Memoised for one `ready()`.)
        """
        if key in self._usable_memo:
            return self._usable_memo[key]
        ok = self.state[key] == "done" and not any(
            self.state[d] in ("planned", "running") for d in self.partial.get(key, ())) and all(
            self.state[d] == "failed" or self._usable(d) for d in self.units[key].deps)
        self._usable_memo[key] = ok
        return ok

    def _unsettled_choices(self) -> set[str]:
        """Units added by a result that may still change: its unit or an input of it will run.

        (A beam ranked on a partial first-order group ranks again once the group is complete;
        the higher orders its old ranking chose wait for the new choice, which may drop them.)
        """
        out: set[str] = set()
        for key, added in self.expanded.items():
            if key in self.units and (self._pending(key) or any(
                    self._pending(d) or (self.state[d] == "done" and not self._usable(d))
                    for d in self.units[key].required)):
                out.update(added)
        return out

    def _pending(self, key: str) -> bool:
        """Whether `key` will still run in this run.

        Planned, running, or partial with its missing deps still to come; failed for good is
        not pending (nothing about it will change).
        """
        return self.state[key] in ("planned", "running") or any(
            self.state[d] in ("planned", "running") for d in self.partial.get(key, ()))

    def ready(self) -> list[Unit]:
        """Planned units whose dependencies are done, by stage priority; failed deps fail them."""
        self._fail_orphans()
        self._usable_memo = {}
        settled = all(self.state[k] in ("done", "failed")
                      for k, u in self.units.items() if not u.barrier)
        held = self._unsettled_choices()
        out = []
        for key, u in self.units.items():
            if self.state[key] != "planned" or key in held:
                continue
            if u.barrier and not settled:
                continue
            if all(self._usable(d) for d in u.required) and all(
                    self.state[d] == "failed" or self._usable(d) for d in u.optional):
                out.append(u)
        return sorted(out, key=lambda u: PRIORITY.index(u.stage))

    @property
    def _loss_writers(self) -> list[str]:
        """The units that write per-image losses: what a barrier (the analysis) reads."""
        return [k for k, u in self.units.items() if not u.barrier and losses_path(k) in u.outputs]

    def _fail_orphans(self) -> None:
        """Fail, unrun, the planned units that a failure leaves nothing to run on (`blocked`)."""

        def bad(key: str) -> str | None:
            return "failed" if self.state.get(key) == "failed" else None

        changed = True
        while changed:
            changed = False
            chosen_by = {k: c for c, added in self.expanded.items() for k in added}
            # (A failed unit's earlier result, still in storage, is read: `inputs_of`.)
            none_done = all(self.state[k] == "failed" and k not in self.digest
                            for k in self._loss_writers)
            for key, u in self.units.items():
                if self.state[key] != "planned":
                    continue
                why = blocked_reason(u, bad, chosen_by.get(key), none_done)
                if why is None:
                    continue
                self.errors[key] = why
                self.state[key] = "failed"
                self.blocked.add(key)
                changed = True

    def started(self, unit: Unit) -> None:
        """The runner submitted `unit` (without whichever optional deps failed)."""
        self.state[unit.key] = "running"
        self.blocked.discard(unit.key)
        self.tries[unit.key] += 1
        without = [d for d in unit.optional if self.state[d] == "failed"]
        if without:
            self.partial[unit.key] = without
        else:
            self.partial.pop(unit.key, None)

    def succeeded(self, unit: Unit, version: Version | None = None) -> list[Unit]:
        """`unit` finished (its outputs and what it read: `version`); returns what it added.

        A barrier summarises every other unit: one adopted as done from an earlier run is
        planned again once any other unit finishes in this one (its inputs changed). Other
        done units that read `unit` run again if its result is not the one they read.
        """
        if unit.key not in self.units:  # dropped from the plan while it ran (`_expand_from`)
            return []
        self.state[unit.key] = "done"
        self.errors.pop(unit.key, None)
        v = version or Version()
        self.digest[unit.key], self.read[unit.key] = v.digest, dict(v.inputs)
        for key, u in self.units.items():
            if unit.key in u.deps and self.state[key] == "done":
                self._unless_changed(key)
        self._unless_changed(unit.key)  # (an input of its own ran again while it ran)
        if not unit.barrier:
            for key, u in self.units.items():
                if u.barrier and self.state[key] == "done":
                    self.state[key] = "planned"
        self._complete_partial(unit.key)
        return self._expand_from(unit)

    def _complete_partial(self, key: str) -> None:
        """Plan again the done units that went without `key`, and the done units reading them.

        Only a unit adopted from an earlier run can have gone without a unit that succeeds now
        (in one run a unit waits until its optional deps have succeeded or failed for good).
        """
        for k in [k for k, without in self.partial.items()
                  if key in without and self.state[k] == "done"]:
            self._replan(k)

    def _replan(self, key: str) -> None:
        """Plan `key` again, and every done unit that read it (transitively)."""
        stale = [key]
        while stale:
            k = stale.pop()
            self.state[k] = "planned"
            self.partial.pop(k, None)
            stale += [d for d, u in self.units.items()
                      if k in u.deps and self.state[d] == "done" and d not in stale]

    def failed(self, unit: Unit, error: str, *, transient: bool,
               node_lost: bool = False) -> bool:
        """`unit` failed; transient errors are retried a bounded number of times. True: retry.

        An attempt cut short by a lost node (a spot preemption, a dead machine) is not the
        unit's fault: it is retried without spending `retries`, up to `node_losses` times.
        """
        if unit.key not in self.units:  # dropped from the plan while it ran
            return False
        self.errors[unit.key] = error
        if node_lost and self.lost[unit.key] < self.node_losses:
            self.lost[unit.key] += 1
            self.tries[unit.key] -= 1
            self.state[unit.key] = "planned"
            return True
        retry = transient and self.tries[unit.key] <= self.retries
        self.state[unit.key] = "planned" if retry else "failed"
        return retry

    @property
    def finished(self) -> bool:
        """Nothing planned or running is left."""
        self._fail_orphans()
        return all(s in ("done", "failed") for s in self.state.values())

    def counts(self) -> dict[str, dict[str, int]]:
        """Units per stage and state."""
        out = {s: dict.fromkeys(STATES, 0) for s in STAGES}
        for key, u in self.units.items():
            out[u.stage][self.state[key]] += 1
        return out

    def failures(self) -> dict[str, str]:
        """The error of every failed unit (those blocked by another's failure included)."""
        return {k: self.errors.get(k, "") for k, s in self.state.items() if s == "failed"}

    def blocked_units(self) -> list[str]:
        """The failed units that never ran: another unit's failure left them nothing to run on."""
        keys = [k for k in self.blocked if self.state.get(k) == "failed"]
        return sorted(keys, key=lambda k: (STAGES.index(self.units[k].stage), k))
