"""Reading whole tables, to show that a rejected request changed nothing."""

from __future__ import annotations

from sqlalchemy import Engine, select

from queuectl.models import ConfigEntry, Job

_ORDER = {Job.__table__: Job.__table__.c.seq, ConfigEntry.__table__: ConfigEntry.__table__.c.key}


def table_contents(engine: Engine) -> dict[str, list[tuple]]:
    """Return every row of the jobs and config tables, in a stable order."""
    contents = {}
    with engine.connect() as conn:
        for table, order in _ORDER.items():
            rows = conn.execute(select(table).order_by(order))
            contents[table.name] = [tuple(row) for row in rows]
    return contents
