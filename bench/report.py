"""Tables that bench/run.py prints: the measured figures, then the goals as ratios."""

from __future__ import annotations

import statistics


class Results:
    """Figures of one benchmark run in the order they were measured, with their medians."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []
        self.medians: dict[str, float] = {}

    def add(self, key: str, label: str, values: list[float], spread: bool = True,
            digits: int = 1) -> None:
        """Record a figure under `key` with its median, and min to max when `spread`.

        The table shows the figures with `digits` decimals.
        """
        median = statistics.median(values)
        self.medians[key] = median
        if spread:
            text = f"{median:,.{digits}f} ({min(values):,.{digits}f} to {max(values):,.{digits}f})"
        else:
            text = f"{median:,.{digits}f}"
        self.rows.append((label, text))

    def get(self, key: str) -> float | None:
        return self.medians.get(key)


def goal_rows(results: Results, small: int, large: int) -> list[tuple[str, str, str, str]]:
    """Return (measure, goal, measured, met) rows for the goals whose inputs were measured.

    A comparison with a peer has no fixed goal, so its goal and met cells are empty.
    """
    rows = []

    def add(measure: str, measured: str, goal: str = "", met: bool | None = None) -> None:
        if met is None:
            met_text = ""
        else:
            met_text = "yes" if met else "no"
        rows.append((measure, goal, measured, met_text))

    pool = results.get("pool.drain")
    for backend, minimum in (("sqlite", 0.75), ("postgresql", 0.60)):
        # Each drain run follows a pool run of its own. On a shared machine the median of
        # those paired ratios is steadier than a ratio of the two medians.
        paired = results.get(f"queuectl-{backend}.drain_ratio")
        drain = results.get(f"queuectl-{backend}.drain")
        if paired is not None:
            add(f"queuectl {backend} drain / thread pool run before it", f"{paired:.2f}",
                f">= {minimum:.2f}", paired >= minimum)
        elif drain is not None and pool is not None:
            add(f"queuectl {backend} drain / thread pool", f"{drain / pool:.2f}",
                f">= {minimum:.2f}", drain / pool >= minimum)

    pg_drain = results.get("queuectl-postgresql.drain")
    procrastinate_drain = results.get("procrastinate.drain")
    if pg_drain is not None and procrastinate_drain is not None:
        add("queuectl postgresql drain / procrastinate drain",
            f"{pg_drain / procrastinate_drain:.2f}")

    sqlite_p50 = results.get("queuectl-sqlite.p50")
    if sqlite_p50 is not None:
        add("queuectl sqlite enqueue to done, p50 ms", f"{sqlite_p50:.1f}", "< 5",
            sqlite_p50 < 5)

    pg_p50 = results.get("queuectl-postgresql.p50")
    procrastinate_p50 = results.get("procrastinate.p50")
    if pg_p50 is not None and procrastinate_p50 is not None:
        ratio = pg_p50 / procrastinate_p50
        add("queuectl postgresql p50 / procrastinate p50", f"{ratio:.2f}", "<= 1", ratio <= 1)

    for backend, target in (("sqlite", 50_000), ("postgresql", 20_000)):
        rate = results.get(f"queuectl-{backend}.enqueue_file")
        if rate is not None:
            add(f"queuectl {backend} enqueue --file / {target:,} jobs/s",
                f"{rate / target:.2f}", ">= 1", rate >= target)

    enqueue = results.get("cli.enqueue")
    imports = results.get("cli.imports")
    if enqueue is not None and imports is not None:
        add("one `queuectl enqueue` / `import sqlalchemy, typer`", f"{enqueue / imports:.2f}",
            "<= 1.3", enqueue / imports <= 1.3)

    for backend in ("sqlite", "postgresql"):
        for command in ("status", "list"):
            small_ms = results.get(f"queuectl-{backend}.{command}@{small}")
            large_ms = results.get(f"queuectl-{backend}.{command}@{large}")
            if small_ms is not None and large_ms is not None:
                add(f"queuectl {backend} {command}, {large:,} / {small:,} jobs",
                    f"{large_ms / small_ms:.2f}", "<= 2", large_ms / small_ms <= 2)

    for backend in ("sqlite", "postgresql"):
        rss = results.get(f"queuectl-{backend}.rss")
        if rss is not None:
            add(f"queuectl {backend} worker peak RSS, MiB", f"{rss:.1f}", "<= 45", rss <= 45)
    return rows


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Return a Markdown table whose columns are padded to their widest cell."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])
