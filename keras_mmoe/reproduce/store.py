"""A study's JSON file as a resumable record: finished work is written as it ends.

A study is a fixed list of **units** of work (for example one vectorized cell of K runs), each
named by a key. :class:`StudyStore` holds the study's settings and every finished run; after
each unit it rewrites the file atomically (:func:`keras_mmoe.saving.write_json`), so a study
killed at any moment leaves the file as it was after its last finished unit. Started again with
the same settings it skips the finished units and runs the others; every unit is computed as it
would have been in one uninterrupted session (a unit is always run whole, from its own seeds),
so the resumed file holds the same results. Different settings are refused with the names of the
settings that differ: results of two protocols never mix, and nothing is overwritten.

Example:

>>> store = StudyStore("results/synthetic.json", settings)            # doctest: +SKIP
>>> for unit in store.pending(units):
...     store.add(unit, train_cell(unit))                             # written at once
"""

import json
import os
import time

from keras_mmoe.saving import write_json


class StudyStore:
    """The runs of one study, kept in a JSON file that a later session continues.

    Args:
        path: the study's JSON file (created with its directory when absent).
        settings: JSON-serializable dict of everything that defines the study's results; a file
            written with other settings is refused.
        session: optional facts of this session (command, environment), appended to the file's
            ``sessions`` list, so a resumed study records every session that contributed.

    The file holds ``{"settings", "sessions", "units_done", "runs", ...}``; every run record
    carries its ``unit``. Extra top-level entries (a summary) are set with :meth:`update`.
    """

    def __init__(self, path, settings, session=None):
        self.path = os.fspath(path)
        settings = json.loads(json.dumps(settings))  # as it will read back (tuples -> lists)
        if os.path.exists(self.path):
            try:
                with open(self.path, encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError) as error:
                raise ValueError(f"{self.path}: not a readable study file ({error})") from None
            if not isinstance(record, dict) or not {"settings", "units_done", "runs"} <= set(record):
                raise ValueError(f"{self.path}: not a study file (no settings/units_done/runs); refusing to overwrite it")
            differ = sorted(k for k in set(settings) | set(record["settings"])
                            if settings.get(k) != record["settings"].get(k))
            if differ:
                details = ", ".join(f"{k}: file {record['settings'].get(k)!r}, now {settings.get(k)!r}" for k in differ)
                raise ValueError(
                    f"{self.path} holds a study with other settings ({details}); continue it with its own "
                    "settings or write to another file"
                )
            self.record = record
        else:
            self.record = {"settings": settings, "sessions": [], "units_done": [], "runs": []}
        started = dict(session or {}, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self._commit(dict(self.record, sessions=self.record.get("sessions", []) + [started]))

    @property
    def settings(self):
        return self.record["settings"]

    @property
    def runs(self):
        """Every finished run record, in the order they were added."""
        return list(self.record["runs"])

    def is_done(self, unit):
        return str(unit) in self.record["units_done"]

    def pending(self, units):
        """The units of ``units`` not finished yet, in their order."""
        return [u for u in units if not self.is_done(u)]

    def add(self, unit, runs):
        """Records unit ``unit`` as finished with its run records, and writes the file."""
        unit = str(unit)
        if self.is_done(unit):
            raise ValueError(f"unit {unit!r} is already recorded in {self.path}")
        self._commit(dict(self.record, runs=self.record["runs"] + [dict(run, unit=unit) for run in runs],
                          units_done=self.record["units_done"] + [unit]))

    def update(self, **entries):
        """Sets top-level entries (for example ``summary``) and writes the file."""
        reserved = {"settings", "sessions", "units_done", "runs"} & set(entries)
        if reserved:
            raise ValueError(f"StudyStore.update cannot set {sorted(reserved)}")
        self._commit(dict(self.record, **entries))

    def _commit(self, record):
        """Writes ``record`` and then takes it as the store's state (a failed write changes neither)."""
        write_json(self.path, record)
        self.record = record
