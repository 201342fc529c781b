"""A small ML Metadata store on SQLite: artifacts, executions, and the events joining them.

The same three tables as MLMD, so every run's lineage can be queried: which examples a
model was trained on, with which trainer configuration, which evaluation blessed it,
which version was pushed. Executions carry a cache key (component, input artifacts,
execution properties); a finished execution with the same key is reused.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY, type TEXT NOT NULL, uri TEXT NOT NULL,
    properties TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY, component TEXT NOT NULL, properties TEXT NOT NULL,
    cache_key TEXT NOT NULL, state TEXT NOT NULL, started REAL NOT NULL, finished REAL);
CREATE TABLE IF NOT EXISTS events (
    execution_id INTEGER NOT NULL REFERENCES executions(id),
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    kind TEXT NOT NULL CHECK (kind IN ('input', 'output')), name TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS executions_by_key ON executions(cache_key, state);
"""


@dataclasses.dataclass
class Artifact:
    """A typed artifact: a URI plus properties (e.g. Examples, Model, ModelBlessing)."""

    type: str
    uri: str
    properties: dict = dataclasses.field(default_factory=dict)
    id: int | None = None


@dataclasses.dataclass
class Execution:
    id: int
    component: str
    properties: dict
    state: str
    cached: bool = False


class MetadataStore:
    """store = MetadataStore("pipeline/metadata.sqlite")."""

    def __init__(self, path: str):
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- writing ------------------------------------------------------------------------

    def start(self, component: str, properties: dict, cache_key: str) -> int:
        with self.db:
            cur = self.db.execute(
                "INSERT INTO executions (component, properties, cache_key, state, started) "
                "VALUES (?, ?, ?, 'running', ?)",
                (component, json.dumps(properties, sort_keys=True), cache_key, time.time()),
            )
        return cur.lastrowid

    def finish(
        self,
        execution_id: int,
        inputs: dict[str, Artifact],
        outputs: dict[str, Artifact],
        state: str = "complete",
    ) -> None:
        """Records the outputs (new artifacts) and the events of an execution, atomically."""
        with self.db:
            for name, artifact in outputs.items():
                if artifact.id is None:
                    artifact.id = self.db.execute(
                        "INSERT INTO artifacts (type, uri, properties, created) "
                        "VALUES (?, ?, ?, ?)",
                        (
                            artifact.type,
                            artifact.uri,
                            json.dumps(artifact.properties, sort_keys=True),
                            time.time(),
                        ),
                    ).lastrowid
                self._event(execution_id, artifact.id, "output", name)
            for name, artifact in inputs.items():
                self._event(execution_id, artifact.id, "input", name)
            self.db.execute(
                "UPDATE executions SET state = ?, finished = ? WHERE id = ?",
                (state, time.time(), execution_id),
            )

    def fail(self, execution_id: int) -> None:
        with self.db:
            self.db.execute(
                "UPDATE executions SET state = 'failed', finished = ? WHERE id = ?",
                (time.time(), execution_id),
            )

    def _event(self, execution_id, artifact_id, kind, name):
        self.db.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?)", (execution_id, artifact_id, kind, name)
        )

    # -- reading ------------------------------------------------------------------------

    def _artifact(self, row) -> Artifact:
        return Artifact(row[1], row[2], json.loads(row[3]), row[0])

    def artifact(self, artifact_id: int) -> Artifact:
        row = self.db.execute(
            "SELECT id, type, uri, properties FROM artifacts WHERE id = ?", (artifact_id,)
        ).fetchone()
        return self._artifact(row)

    def artifacts(self, type_name: str | None = None) -> list[Artifact]:
        query = "SELECT id, type, uri, properties FROM artifacts"
        rows = (
            self.db.execute(query + " WHERE type = ? ORDER BY id", (type_name,))
            if type_name
            else self.db.execute(query + " ORDER BY id")
        )
        return [self._artifact(r) for r in rows]

    def cached(self, cache_key: str) -> tuple[int, dict[str, Artifact]] | None:
        """The newest complete execution with this key and its outputs, if any."""
        row = self.db.execute(
            "SELECT id FROM executions WHERE cache_key = ? AND state = 'complete' "
            "ORDER BY id DESC LIMIT 1",
            (cache_key,),
        ).fetchone()
        if row is None:
            return None
        return row[0], self.outputs(row[0])

    def outputs(self, execution_id: int) -> dict[str, Artifact]:
        rows = self.db.execute(
            "SELECT e.name, a.id, a.type, a.uri, a.properties FROM events e "
            "JOIN artifacts a ON a.id = e.artifact_id "
            "WHERE e.execution_id = ? AND e.kind = 'output'",
            (execution_id,),
        )
        return {r[0]: self._artifact(r[1:]) for r in rows}

    def execution(self, execution_id: int) -> Execution:
        row = self.db.execute(
            "SELECT id, component, properties, state FROM executions WHERE id = ?", (execution_id,)
        ).fetchone()
        return Execution(row[0], row[1], json.loads(row[2]), row[3])

    def executions(self, component: str | None = None) -> list[Execution]:
        query = "SELECT id, component, properties, state FROM executions"
        rows = (
            self.db.execute(query + " WHERE component = ? ORDER BY id", (component,))
            if component
            else self.db.execute(query + " ORDER BY id")
        )
        return [Execution(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def producer(self, artifact_id: int) -> tuple[Execution, dict[str, Artifact]] | None:
        """The execution that produced an artifact, and that execution's input artifacts."""
        row = self.db.execute(
            "SELECT execution_id FROM events WHERE artifact_id = ? AND "
            "kind = 'output' ORDER BY execution_id LIMIT 1",
            (artifact_id,),
        ).fetchone()
        if row is None:
            return None
        rows = self.db.execute(
            "SELECT e.name, a.id, a.type, a.uri, a.properties FROM events e "
            "JOIN artifacts a ON a.id = e.artifact_id "
            "WHERE e.execution_id = ? AND e.kind = 'input'",
            (row[0],),
        )
        return self.execution(row[0]), {r[0]: self._artifact(r[1:]) for r in rows}

    def lineage(self, artifact_id: int) -> list[tuple[str, Artifact]]:
        """Every ancestor of an artifact as (producing component, artifact), nearest first."""
        seen, out, frontier = {artifact_id}, [], [artifact_id]
        while frontier:
            produced = self.producer(frontier.pop(0))
            if produced is None:
                continue
            execution, inputs = produced
            for artifact in inputs.values():
                if artifact.id not in seen:
                    seen.add(artifact.id)
                    parent = self.producer(artifact.id)
                    out.append((parent[0].component if parent else "", artifact))
                    frontier.append(artifact.id)
        return out
