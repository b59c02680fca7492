"""The ledger of a setting: the durable record of which trials started, checkpointed and ended.

One append-only JSON-lines file per setting in the workspace, written by the driver alone, one
flushed line per event (a start, end or reuse also fsync'd: on disk before the trial's MLflow run
is made or its outcome told):

    {"event": "start", "key": ..., "spec": {...}, "group": G} a trial was handed to Ray, to train in
                                                             population G (its first member's key)
    {"event": "checkpoint", "key": G, "path": "..."}         the population's newest checkpoint
    {"event": "end", "key": ..., "outcome": {...}}           how it ended (the outcome is final)
    {"event": "reuse", "key": ..., "spec": {...},            a confirm trial whose configuration a
     "outcome": {...}}                                       finished search trial trained already:
                                                             started and ended at once, with that
                                                             trial's outcome (``reused_from``)
    {"event": "experiment", "key": "run-N-TOKEN"}            a Tune experiment ran (or resumed) it

It is the source of truth for resuming: a search that was interrupted, even by ``kill -9``,
continues from what the ledger holds (ended trials are never re-run; a population with trials
that never ended is re-run with the same members from its newest checkpoint), and MLflow and Optuna are reconciled with it.
The end event is written before anything is told to MLflow or Optuna. A torn last line (the
process died while writing it) is ignored. Plain JSON, so resuming never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from pathlib import Path
from typing import Any

from dm_tune.errors import UserError
from dm_tune.search._trial import TrialOutcome, TrialSpec


class Ledger:
    def __init__(self, path: Path, root: Path | None = None) -> None:
        """``root``: the workspace; checkpoints inside it are kept relative to it, so that a
        workspace moved (or mounted elsewhere) resumes from them."""
        self.path, self.root = path, root
        self.started: dict[str, TrialSpec] = {}       # key -> spec, in start order
        self.group: dict[str, str] = {}               # key -> the population it trains in
        self.ended: dict[str, TrialOutcome] = {}
        self.checkpoints: dict[str, str] = {}
        self.experiments: list[str] = []              # Tune experiment names, in order
        self._torn = False                            # the file ends in a torn line
        if path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except OSError as e:  # (a folder in its place, a file this user cannot read)
            raise UserError(f"{self.path}: cannot be read ({e.strerror or e}); the ledger is damaged: restore it, or "
                            "run the study in another --workspace") from None
        self._torn = bool(data) and not data.endswith(b"\n")
        for number, raw in enumerate(data.splitlines(), 1):
            try:
                event = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:  # the ledger writes ASCII alone: not a line it wrote
                raise self._damaged(number, "bytes that are not text") from None
            except json.JSONDecodeError:
                continue  # a torn line (the process died writing it; the next write starts a new line): never happened
            try:
                self._apply(event)
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                raise self._damaged(number, f"not an event this dm-tune writes ({type(e).__name__}: {e})") from None

    def _damaged(self, number: int, what: str) -> UserError:
        return UserError(f"{self.path}: line {number} holds {what}; the ledger is damaged: restore it, or run "
                         "the study in another --workspace")

    def _apply(self, event: dict[str, Any]) -> None:
        key = event["key"]
        if event["event"] == "start":
            self.started[key] = TrialSpec.from_dict(event["spec"])
            self.group[key] = event.get("group", key)
        elif event["event"] == "checkpoint":
            self.checkpoints[key] = event["path"]
        elif event["event"] == "end":
            self.ended[key] = TrialOutcome.from_dict(event["outcome"])
        elif event["event"] == "reuse":
            self.started[key] = TrialSpec.from_dict(event["spec"])
            self.group[key] = key
            self.ended[key] = TrialOutcome.from_dict(event["outcome"])
        elif event["event"] == "experiment":
            self.experiments.append(key)

    def _append(self, event: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = ("\n" if self._torn else "") + json.dumps(event, allow_nan=True, separators=(",", ":")) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()  # in the OS once written: a killed process loses nothing
                if event["event"] in ("start", "end", "reuse"):
                    # on disk, to survive the machine going down too: an outcome, and a start, whose
                    # trial's MLflow run (committed by SQLite) a resume would otherwise find unknown
                    # to the ledger and refuse
                    os.fsync(f.fileno())
        except OSError:  # a disk full, say: part of the line may be in the file, so the next starts anew
            self._torn = True
            raise
        self._torn = False
        self._apply(event)

    # --- events -------------------------------------------------------------------------

    def start(self, population: list[TrialSpec]) -> str:
        """Record a population's members as started; returns its group name."""
        group = self.group.get(population[0].key, population[0].key)
        for spec in population:
            if spec.key not in self.started:
                self._append({"event": "start", "key": spec.key, "spec": spec.to_dict(), "group": group})
        return group

    def checkpoint(self, group: str, path: str) -> None:
        if self.root is not None and "://" not in path and Path(path).is_relative_to(self.root):
            path = Path(path).relative_to(self.root).as_posix()
        self._append({"event": "checkpoint", "key": group, "path": path})

    def checkpoint_path(self, group: str) -> str | None:
        """Where population ``group``'s newest checkpoint is now: a URI, an absolute path, or one
        in the workspace (recorded relative to it)."""
        path = self.checkpoints.get(group)
        if path is None or "://" in path or Path(path).is_absolute() or self.root is None:
            return path
        return str(self.root / path)

    def end(self, spec: TrialSpec, outcome: TrialOutcome) -> bool:
        """Record how a trial ended; False if it had already ended (a re-run after a resume)."""
        if spec.key in self.ended:
            return False
        self._append({"event": "end", "key": spec.key, "outcome": outcome.to_dict()})
        return True

    def reuse(self, spec: TrialSpec, source: TrialSpec) -> None:
        """Record ``spec`` as started and ended with the outcome of the ended trial ``source``,
        which trained the same configuration (one line: an interruption leaves neither or both)."""
        outcome = dataclasses.replace(self.ended[source.key], reused_from=source.key)
        self._append({"event": "reuse", "key": spec.key, "spec": spec.to_dict(), "outcome": outcome.to_dict()})

    def new_experiment(self) -> str:
        """The name of the next Tune experiment of this setting: run-1-TOKEN, run-2-TOKEN (after a
        resume), ... The random token keeps names apart across searches: Ray stages a run's files on
        the cluster in a folder named by its start second and experiment name, and two searches that
        started a run-1 in the same second copied each other's trials into their storage."""
        name = f"run-{len(self.experiments) + 1}-{secrets.token_hex(3)}"
        self._append({"event": "experiment", "key": name})
        return name

    # --- views --------------------------------------------------------------------------

    def unfinished(self) -> list[TrialSpec]:
        """Trials that started but never ended (running when the search was interrupted)."""
        return [spec for key, spec in self.started.items() if key not in self.ended]

    def unfinished_populations(self) -> list[list[TrialSpec]]:
        """The populations with trials that never ended, each with all its members in order."""
        groups: dict[str, list[TrialSpec]] = {}
        for key, spec in self.started.items():
            groups.setdefault(self.group[key], []).append(spec)
        return [members for members in groups.values() if any(s.key not in self.ended for s in members)]

    def ended_specs(self, stage: str | None = None) -> list[tuple[TrialSpec, TrialOutcome]]:
        return [(self.started[k], o) for k, o in self.ended.items()
                if k in self.started and (stage is None or self.started[k].stage == stage)]
