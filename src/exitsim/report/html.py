"""The HTML report of a result file: one self-contained page (the plots as inline SVG,
CSS inline, no scripts, nothing fetched) with what was run, the comparison, the exit
latency and lock wait distributions, CPU time, locks, TLB work and the config. Every
time is shown in the unit it reads best in (``format_ns``: 11.3 s, 2.40 ms). The same
results give the same page. A comparison over several seeds shows each metric's mean
with its 95% interval and ratios paired by seed (report/seeds.py), and names the seed
of every run it lists."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from exitsim.report.compare import METRIC_HELP, METRICS, compare_cells, number_text
from exitsim.report.plots import format_ns, has_wait_buckets, render, wait_hist
from exitsim.report.result import exit_latencies, percentile
from exitsim.report.seeds import common_seeds, seed_count, seeds_text
from exitsim.report.table import (
    Rows,
    cpu_rows,
    lock_rows,
    params_text,
    tlb_rows,
    workload_text,
)
from exitsim.workloads.spec import FORMAT, TREE, WorkloadSpec, dump_workload

_CSS = """
:root { color-scheme: light; --ink: #1d232a; --muted: #5b6570; --rule: #d8dde3;
  --band: #f4f6f8; --accent: #1f5f99; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1400px; padding: 1.5rem 1.5rem 3rem; color: var(--ink);
  background: #fff; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
  "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 1.6rem; margin: 0 0 .4rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .6rem; padding-bottom: .2rem;
  border-bottom: 2px solid var(--rule); }
h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
p { margin: .4rem 0; max-width: 80ch; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: var(--band); padding: .1em .3em; border-radius: 3px; }
pre.cmd { background: var(--band); padding: .6rem .8rem; border-radius: 4px;
  overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
pre.cmd code, pre.file code { background: none; padding: 0; }
pre.file { background: var(--band); padding: .6rem .8rem; border-radius: 4px;
  max-height: 24rem; overflow: auto; font-size: .85rem; }
nav { margin: 1rem 0; padding: .5rem 0; border-top: 1px solid var(--rule);
  border-bottom: 1px solid var(--rule); }
nav a { margin-right: 1.2rem; color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
.note { color: var(--muted); font-size: .92rem; }
.warn { color: #8a3b00; }
figure { margin: .5rem 0; }
figure svg { display: block; width: 100%; height: auto; }
dl.panels { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem;
  margin: .8rem 0; }
dl.panels dt { font-weight: 600; }
dl.panels dd { margin: 0; color: var(--muted); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .3rem 0 1.2rem; font-size: .85rem;
  font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: .2rem 0 .4rem; }
th, td { padding: .25rem .45rem; border-bottom: 1px solid var(--rule); text-align: right;
  white-space: nowrap; }
th { background: var(--band); font-weight: 600; vertical-align: bottom; }
th[title] { cursor: help; text-decoration: underline dotted var(--muted); }
th.name, td.name { text-align: left; }
tbody tr:nth-child(even) td { background: #fafbfc; }
tr.total td { font-weight: 600; border-top: 2px solid var(--rule); }
td .ratio { color: var(--muted); font-size: .85em; margin-left: .25em; }
details { margin: .4rem 0; border: 1px solid var(--rule); border-radius: 4px;
  padding: .3rem .8rem; }
details[open] { padding-bottom: .6rem; }
summary { cursor: pointer; font-weight: 600; }
footer { margin-top: 3rem; color: var(--muted); font-size: .85rem; }
@media print { nav { display: none; } details { border: none; } }
"""

#: What each panel of the figure answers, by panel title (after the arch and CPUs).
_PANELS: dict[str, str] = {
    "wall time vs CPUs": "Does the design finish the workload sooner, and does that hold "
    "as CPUs are added? Wall time (makespan) per design against the CPU count, per arch.",
    "wall time relative to the baseline": "How much sooner or later, exactly? Each "
    "design's wall time divided by the baseline's at the same CPU count (below 1: "
    "faster); the differences the absolute panel is too coarse to show.",
    "sys time charged per process": "Who pays for the teardown? The sys time each exited "
    "process is charged (what wait4 and time(1) report), one point per process, with "
    "its quartiles as a box. A design that tears down in exit1 charges the exiting "
    "process; the reaper design charges the reaper instead.",
    "exit latency (CDF)": "How long does a parent wait for an exiting child? For each "
    "process, exit1 entry to the parent's wait4 return, as the share of processes done "
    "within a time (a CDF, on a log time axis), with the median and 99th percentile "
    "marked: the whole distribution, not only p50 and p99.",
    "lock wait by lock": "Which locks does the design make CPUs wait for, and for how "
    "long? Wait time summed over CPUs, by lock (per-object locks summed by family).",
    "lock waits by duration": "Are the waits many short ones or a few long ones? Each "
    "wait for a lock counted in a power-of-two bucket of its length.",
    "memory held after exit": "How much memory do processes that have entered exit1 "
    "still have mapped, and for how long, before teardown unmaps it? A lane per design "
    "(step lines: the value holds until the next change); the peak and the time "
    "integral are written in each lane, as exits are short next to a whole run.",
    "reaper backlog and zombies": "Does the reaper keep up? Threads waiting on deadproc "
    "for the reaper, and zombies not yet waited for, over time, a lane each.",
}

#: How every value axis is scaled (plots.py, ``LOG_SPAN``).
_SCALE_NOTE = (
    "Every value axis is linear from 0 unless its values span more than 100 times, "
    "then logarithmic, and its label says so; times of single events (exit latency, "
    "lock waits) are on a logarithmic axis."
)

#: How the figure draws several seeds (plots.py).
_SEEDS_NOTE = (
    "Over several seeds: wall time is the mean, its ratio to the baseline the geometric "
    "mean of the per-seed ratios (the same seed draws the same workload for every "
    "design), each with its 95% interval as error bars; lock wait by lock is the mean "
    "with its 95% interval; sys time, exit latency and lock waits by duration pool "
    "every seed's processes and waits; memory held is drawn for the first seed, with "
    "its integral over the seeds in each lane."
)

#: The panels of each figure, and a note on how they are laid out.
_FIGURES: dict[bool, tuple[tuple[str, ...], str]] = {
    False: (
        (
            "wall time vs CPUs",
            "wall time relative to the baseline",
            "sys time charged per process",
            "exit latency (CDF)",
            "lock wait by lock",
            "lock waits by duration",
            "memory held after exit",
        ),
        "Per arch; below the first two panels, each is at the arch's largest CPU count. "
        "Colours and marker shapes are designs, the same in every panel. " + _SCALE_NOTE,
    ),
    True: (
        (
            "sys time charged per process",
            "exit latency (CDF)",
            "lock wait by lock",
            "lock waits by duration",
            "memory held after exit",
            "reaper backlog and zombies",
        ),
        "Sys time is grouped by command, the most sys time in all first. " + _SCALE_NOTE,
    ),
}


def _e(v: Any) -> str:
    return escape(str(v), quote=True)


class _Raw(str):
    """Cell text that is already HTML."""


def _table(
    cols: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    caption: str = "",
    names: int = 1,
    tips: dict[str, str] | None = None,
    total_last: bool = False,
) -> str:
    """An HTML table of text cells; the first ``names`` columns are names (left), the
    rest numbers (right). Cells are escaped here, except ``_Raw`` ones."""
    out = ['<div class="scroll"><table>']
    if caption:
        out.append(f"<caption>{_e(caption)}</caption>")
    out.append("<thead><tr>")
    for i, c in enumerate(cols):
        cls = ' class="name"' if i < names else ""
        tip = f' title="{_e(tips[c])}"' if tips and c in tips else ""
        out.append(f"<th{cls}{tip}>{_e(c)}</th>")
    out.append("</tr></thead><tbody>")
    body = list(rows)
    for n, row in enumerate(body):
        total = total_last and n == len(body) - 1
        out.append('<tr class="total">' if total else "<tr>")
        for i, cell in enumerate(row):
            text = cell if isinstance(cell, _Raw) else _e(cell)
            out.append(f'<td class="name">{text}</td>' if i < names else f"<td>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _rows_table(
    rows: tuple[str, list[str], list[list[str]]], total_last: bool = False, caption: bool = True
) -> str:
    """A table of table.py's rows, its title as the caption (unless a heading above
    already says it)."""
    title, cols, body = rows
    return _table(cols, body, caption=title if caption else "", total_last=total_last)


#: A section of the page: its anchor, its heading, its HTML.
_Section = tuple[str, str, str]


def _section(ident: str, title: str, *parts: str) -> _Section:
    return ident, title, "".join(parts)


def _svg(results: dict[str, Any] | list[dict[str, Any]], label: str) -> str:
    """The figure as inline SVG: from the <svg> element on (no XML prolog or doctype,
    which HTML does not take), without its metadata block."""
    svg = render(results, "svg").decode("utf-8")
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.DOTALL)
    return svg.replace("<svg ", f'<svg role="img" aria-label="{_e(label)}" ', 1)


def _ids(results: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """What tells the runs apart: arch, CPUs and design, and the seed when some
    config ran with several."""
    seed = seed_count(results) > 1
    return [
        (
            r["config"]["arch"],
            str(r["config"]["cpus"]),
            r["config"]["policy"],
            *([str(r["config"]["seed"])] if seed else []),
        )
        for r in results
    ]


def _id_cols(results: list[dict[str, Any]]) -> list[str]:
    """The headings of ``_ids``."""
    return ["arch", "CPUs", "design", *(["seed"] if seed_count(results) > 1 else [])]


def _distinct(results: list[dict[str, Any]], key: str) -> list[Any]:
    return list(dict.fromkeys(r["config"].get(key) for r in results))


def _words(items: Sequence[Any]) -> str:
    s = [str(i) for i in items]
    return s[0] if len(s) == 1 else ", ".join(s[:-1]) + " and " + s[-1]


def _command(results: list[dict[str, Any]], single: bool) -> str | None:
    """The command line that makes these results again, or None when the runs do not
    share one workload and seed. A process tree runs from its workload file: the one
    the config names (``workload_file``) if it does, else the file the page holds
    (``_tree_file``)."""
    cfg = results[0]["config"]
    same = {(r["config"]["workload"], _value(r["config"].get("workload_params"))) for r in results}
    seeds = common_seeds(results)
    if len(same) > 1 or seeds is None:
        return None
    args = ["exitsim"]
    if single:
        args += ["run", "--policy", cfg["policy"], "--arch", cfg["arch"]]
        args += ["--cpus", str(cfg["cpus"])]
        if cfg.get("policy_file"):
            args[2:4] = ["--policy-file", cfg["policy_file"]]
    else:
        named = [r["config"]["policy"] for r in results if not r["config"].get("policy_file")]
        files = _distinct([r for r in results if r["config"].get("policy_file")], "policy_file")
        args += ["compare", "--policies", ",".join(dict.fromkeys(named))]
        args += ["--arches", ",".join(_distinct(results, "arch"))]
        args += ["--cpus", ",".join(str(n) for n in _distinct(results, "cpus"))]
        for f in files:
            args += ["--policy-file", f]
    if cfg["workload"] == TREE:
        tree = _tree_file(cfg)
        if tree is None:
            return None
        args += ["--workload", tree[0]]
        jobs = (cfg.get("workload_params") or {}).get("jobs")
        if jobs is not None:
            args += ["--param", f"jobs={jobs}"]
    else:
        if cfg["workload"] != "build":
            args += ["--workload", cfg["workload"]]
        for k, v in sorted((cfg.get("workload_params") or {}).items()):
            args += ["--param", f"{k}={v}"]
    if len(seeds) > 1:
        args += ["--seeds", seeds_text(seeds)]
    else:
        args += ["--seed", str(cfg["seed"])]
    args += ["--granularity", cfg["granularity"]]
    if cfg.get("profile"):
        args += ["--profile", cfg["profile"]]
    for k, v in sorted((cfg.get("cost_overrides") or {}).items()):
        args += ["--cost", f"{k}={v}"]
    if cfg.get("debug"):
        args.append("--debug-checks")
    return " ".join(_shell_word(a) for a in args)


def _tree_file(cfg: dict[str, Any]) -> tuple[str, str | None] | None:
    """A process tree's workload file: (its name, None) when the config records the
    file it came from (``workload_file``), else (a name made from the tree's, the
    file's text written from the tree the config holds, which runs the same); None
    when the config's tree is not a valid one."""
    if cfg.get("workload_file"):
        return str(cfg["workload_file"]), None
    params = cfg.get("workload_params") or {}
    try:
        spec = WorkloadSpec.model_validate(
            {"format": FORMAT, "name": params.get("name", ""), "process": params.get("process")}
        )
    except ValueError:  # pydantic's ValidationError is one
        return None
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "-", spec.name).strip("-.") or "workload"
    return f"{stem}.toml", dump_workload(spec)


def _shell_word(a: str) -> str:
    return a if re.fullmatch(r"[A-Za-z0-9_+,=./:-]+", a) else "'" + a.replace("'", "'\\''") + "'"


def _header(results: list[dict[str, Any]], single: bool, source: str) -> tuple[str, str]:
    """The page's title, and its header: what was run, how to run it again, and any
    invariant a design breaks by construction."""
    cfg = results[0]["config"]
    seed = f"seed {cfg['seed']}"
    if seed_count(results) > 1:
        seeds = sorted({r["config"]["seed"] for r in results})
        seed = f"{seed_count(results)} seeds ({seeds_text(seeds)})"
    common = f"workload {workload_text(cfg)}, {seed}, granularity {cfg['granularity']}"
    if len({workload_text(r["config"]) for r in results}) > 1:
        common = "workloads " + _words([workload_text(r["config"]) for r in results])
    if single:
        r = results[0]
        title = f"exitsim run: {cfg['policy']} on {cfg['arch']}, {cfg['cpus']} CPUs"
        what = (
            f"One run of the design <b>{_e(cfg['policy'])}</b> on {_e(cfg['arch'])} with "
            f"{cfg['cpus']} CPUs, {_e(common)}: wall time "
            f"{format_ns(r['makespan_ns'])}, {r['processes']['count']} processes exited."
        )
    else:
        designs = _distinct(results, "policy")
        arches = _distinct(results, "arch")
        cpus = sorted(_distinct(results, "cpus"))
        title = f"exitsim compare: {', '.join(designs)} on {', '.join(arches)}"
        what = (
            f"A comparison of {len(designs)} design{'s' if len(designs) > 1 else ''} "
            f"({_e(_words(designs))}; the baseline for ratios is <b>{_e(designs[0])}</b>) "
            f"on {_e(_words(arches))} at {_e(_words(cpus))} CPUs, {_e(common)}: "
            f"{len(results)} runs."
        )
    parts = [f"<header><h1>{_e(title)}</h1><p>{what}</p>"]
    cmd = _command(results, single)
    if cmd:
        parts.append(
            f'<p class="note">Run again with:</p><pre class="cmd"><code>{_e(cmd)}</code></pre>'
        )
        tree = _tree_file(cfg) if cfg["workload"] == TREE else None
        if tree is not None and tree[1] is not None:
            n = len(cfg["workload_params"]["process"])
            parts.append(
                f"<details><summary>The workload file {_e(tree[0])} ({n} processes)</summary>"
                '<p class="note">Save it under that name first. It is written from the '
                "process tree the result holds, so it runs the same (the file's description "
                "and source are not in the result).</p>"
                f'<pre class="file"><code>{_e(tree[1])}</code></pre></details>'
            )
    broken = [
        f"{r['config']['policy']} ({r['config']['arch']}, {r['config']['cpus']} CPUs): "
        + ", ".join(f"invariant {i} x{n}" for i, n in r["known_violations"].items())
        for r in results
        if r.get("known_violations")
    ]
    if broken:
        parts.append(
            '<p class="warn">Invariants these designs break by construction (counted, not '
            f"stopped): {_e('; '.join(broken))}.</p>"
        )
    parts.append(f'<p class="note">From {_e(source)}, result schema {results[0]["schema"]}.</p>')
    parts.append("</header>")
    return title, "".join(parts)


def _plots(results: dict[str, Any] | list[dict[str, Any]], single: bool) -> _Section:
    names, note = _FIGURES[single]
    if isinstance(results, list) and seed_count(results) > 1:
        note = _SEEDS_NOTE + " " + note
    panels = "".join(f"<dt>{_e(n)}</dt><dd>{_e(_PANELS[n])}</dd>" for n in names)
    return _section(
        "plots",
        "Plots",
        f"<figure>{_svg(results, 'panels: ' + ', '.join(names))}<figcaption>"
        f'<p class="note">{_e(note)}</p>'
        f'<dl class="panels">{panels}</dl></figcaption></figure>',
    )


#: The comparison's metrics that are times: their unit is left off the heading, and
#: each value is shown in the unit it reads best in.
_TIME_METRICS = {title for title, _, _ in METRICS if title.endswith((" us", " ms"))}


def _heading(title: str) -> str:
    return title[:-3] if title in _TIME_METRICS else title


def _number(i: int, raw: float) -> str:
    """Metric ``i``'s value for the page: a time in the unit it reads best in, the
    others as the terminal shows them."""
    title = METRICS[i][0]
    return format_ns(raw) if title in _TIME_METRICS else number_text(i, raw)


def _comparison(results: list[dict[str, Any]]) -> _Section:
    baseline = results[0]["config"]["policy"]
    cols = ["design", *(_heading(m[0]) for m in METRICS)]
    tips = {_heading(t): METRIC_HELP[t] for t in METRIC_HELP}
    tables = []
    for cell in compare_cells(results, baseline, _number):
        rows = []
        for design, values in cell.rows:
            row: list[str] = [design]
            for v, q in values:
                row.append(_Raw(f'{_e(v)}<span class="ratio">({_e(q)})</span>' if q else _e(v)))
            rows.append(row)
        tables.append(_table(cols, rows, caption=cell.title, tips=tips))
    note = (
        '<p class="note">Each metric per design; in brackets its ratio to the baseline '
        "design of the same arch and CPU count. Hover over a heading for its meaning.</p>"
    )
    if seed_count(results) > 1:
        note = (
            f'<p class="note">Over {seed_count(results)} seeds: each metric\'s mean, '
            "± the half-width of its 95% interval (Student's t); in brackets the ratio to "
            "the baseline design of the same arch and CPU count, taken seed by seed (the "
            "same seed draws the same workload for both), as the geometric mean of the "
            "per-seed ratios with its 95% interval. Hover over a heading for its "
            "meaning.</p>"
        )
    return _section("comparison", "Comparison", note, *tables)


def _latency_row(r: dict[str, Any]) -> list[str]:
    """Exit latencies of a run: how many, and the quantiles (nearest rank, as the
    Result's p50 and p99)."""
    lat = exit_latencies(r)
    if not lat:
        return [str(len(lat))] + ["-"] * 6
    qs = [percentile(lat, q) for q in (0.1, 0.5, 0.9, 0.99)]
    return [f"{len(lat):,}", format_ns(min(lat)), *(format_ns(q) for q in qs), format_ns(max(lat))]


_LATENCY_COLS = ["waited for", "min", "p10", "p50", "p90", "p99", "max"]


def _wait_row(hist: list[int] | None, longest: int) -> list[str]:
    """Lock waits in log2 buckets: how many, the bucket each quantile falls in (as
    "below" its upper end, or "at most" the longest wait when that is lower), and the
    longest wait. None: the result has no buckets (an older exitsim made it)."""
    if hist is None:
        return ["-", "-", "-", "-", format_ns(longest)]
    total = sum(hist)
    if not total:
        return ["0"] + ["-"] * 4
    out = [f"{total:,}"]
    for q in (0.5, 0.9, 0.99):
        need, seen = q * total, 0
        for b, n in enumerate(hist):
            seen += n
            if seen >= need:
                below = 2**b
                out.append(
                    f"< {format_ns(below)}" if below <= longest else f"≤ {format_ns(longest)}"
                )
                break
    return [*out, format_ns(longest)]


_WAIT_COLS = ["waits", "p50", "p90", "p99", "longest"]


def _buckets(r: dict[str, Any], locks: Sequence[str] | None = None) -> list[int] | None:
    return wait_hist(r, locks) if has_wait_buckets(r) else None


def _distributions(results: list[dict[str, Any]], single: bool) -> _Section:
    """Exit latency and lock waits as quantiles, per run (and per lock for a run)."""
    note = (
        '<p class="note">The plots draw these whole (exit latency as a CDF, lock waits '
        "by duration); here as quantiles. Exit latency is exit1 entry to the parent's "
        "wait4 return, per process waited for. A lock wait's quantile is the power-of-two "
        "bucket it falls in, given as its upper end (or the longest wait, if lower).</p>"
    )
    ids = [_id_cols(results), _ids(results)]
    lat = _table(
        [*ids[0], *_LATENCY_COLS],
        [[*i, *_latency_row(r)] for i, r in zip(ids[1], results, strict=True)],
        caption="Exit latency",
        names=len(ids[0]),
    )
    if single:
        r = results[0]
        locks = [n for n, st in sorted(r["locks"].items()) if st["wait_ns"]]
        waits = _table(
            ["lock", *_WAIT_COLS],
            [[n, *_wait_row(_buckets(r, [n]), r["locks"][n]["max_wait_ns"])] for n in locks],
            caption="Lock waits, per lock",
        )
    else:
        waits = _table(
            [*ids[0], *_WAIT_COLS],
            [
                [*i, *_wait_row(_buckets(r), max(s["max_wait_ns"] for s in r["locks"].values()))]
                for i, r in zip(ids[1], results, strict=True)
            ],
            caption="Lock waits, all locks",
            names=len(ids[0]),
        )
    return _section("distributions", "Distributions", note, lat, waits)


#: table.py's time columns (microseconds), by heading: the field each shows.
_US_COLUMNS = {
    "user us": "user_ns",
    "sys us": "sys_ns",
    "spin us": "spin_ns",
    "idle us": "idle_ns",
    "wait us": "wait_ns",
    "max wait us": "max_wait_ns",
    "hold us": "hold_ns",
    "max hold us": "max_hold_ns",
}


def _timed(rows: Rows, records: Sequence[dict[str, Any]]) -> Rows:
    """table.py's rows with each time column in the unit its value reads best in,
    from the ns of ``records`` (a record per row); the headings lose their unit."""
    title, cols, body = rows
    times = {i: _US_COLUMNS[c] for i, c in enumerate(cols) if c in _US_COLUMNS}
    cols = [c[:-3] if i in times else c for i, c in enumerate(cols)]
    body = [
        [format_ns(rec[times[i]]) if i in times else cell for i, cell in enumerate(row)]
        for row, rec in zip(body, records, strict=True)
    ]
    return title, cols, body


def _cpu_rows(r: dict[str, Any]) -> Rows:
    """The per-CPU table, times for people."""
    _, cols, body = _timed(cpu_rows(r), [*r["cpus"], r["cpu"]])
    return f"CPUs (makespan {format_ns(r['makespan_ns'])})", cols, body


def _lock_rows(r: dict[str, Any]) -> Rows:
    """Every lock's acquisitions, contention, wait and hold, times for people."""
    return _timed(lock_rows(r), [s for _, s in sorted(r["locks"].items())])


def _cpu_totals(results: list[dict[str, Any]]) -> str:
    """A row per run: its arch, CPUs and design, then the "all CPUs" row of its CPU
    table."""
    cols = _cpu_rows(results[0])[1][1:]
    body = [
        [*ident, *_cpu_rows(r)[2][-1][1:]] for ident, r in zip(_ids(results), results, strict=True)
    ]
    ids = _id_cols(results)
    return _table([*ids, *cols], body, caption="CPU time, all CPUs", names=len(ids))


def _tlb_totals(results: list[dict[str, Any]]) -> str:
    """A row per run: its arch, CPUs and design, then its TLB work."""
    cols = tlb_rows(results[0])[1]
    body = [[*ident, *tlb_rows(r)[2][0]] for ident, r in zip(_ids(results), results, strict=True)]
    ids = _id_cols(results)
    return _table([*ids, *cols], body, names=len(ids))


def _lock_waits(results: list[dict[str, Any]]) -> str:
    """Wait per lock, a row per run; locks nobody waited for are named, not shown."""
    names = sorted({n for r in results for n in r["locks"]})
    waited = [n for n in names if any(r["locks"].get(n, {}).get("wait_ns") for r in results)]
    body = [
        [*ident, *(format_ns(r["locks"].get(n, {}).get("wait_ns", 0)) for n in waited)]
        for ident, r in zip(_ids(results), results, strict=True)
    ]
    idle = [n for n in names if n not in waited]
    note = f'<p class="note">Never waited for: {_e(", ".join(idle))}.</p>' if idle else ""
    ids = _id_cols(results)
    table = _table(
        [*ids, *waited],
        body,
        caption="Lock wait, summed over CPUs",
        names=len(ids),
    )
    return table + note


def _kv(r: dict[str, Any], caption: str = "Processes, memory, reaper") -> str:
    """Processes, memory, reaper, zombies and threads as name/value rows."""
    rows = []
    for group in ("processes", "memory", "reaper", "zombies", "threads"):
        for k, v in (r.get(group) or {}).items():
            rows.append([f"{group}.{k}", _counter(k, v)])
    return _table(["field", "value"], rows, caption=caption)


def _counter(key: str, v: Any) -> str:
    """A counter's value for people: times in the unit they read best in, memory over
    time in MiB*s, a count over time in thread*s, the rest as numbers."""
    if not isinstance(v, int):
        return str(v)
    if key.endswith("_byte_ns"):
        return f"{v / (1 << 20) / 1e9:,.3f} MiB*s"
    if key == "backlog_integral_ns":
        return f"{v / 1e9:,.3f} thread*s"
    if key.endswith("_ns") or "_ns_" in key:
        return format_ns(v)
    return f"{v:,}"


def _details(r: dict[str, Any]) -> str:
    """Everything ``exitsim run`` prints about one run, and its counters."""
    return (
        _rows_table(_cpu_rows(r), total_last=True)
        + _rows_table(_lock_rows(r))
        + _rows_table(tlb_rows(r))
        + _kv(r)
    )


def _config(results: list[dict[str, Any]]) -> _Section:
    """Each config key with its value, or its values in run order where runs differ."""
    keys = list(dict.fromkeys(k for r in results for k in r["config"]))
    rows = []
    for k in keys:
        if k == "workload_params":
            vals = list(dict.fromkeys(params_text(r["config"]) for r in results))
        else:
            vals = list(dict.fromkeys(_value(r["config"].get(k)) for r in results))
        rows.append([k, "; ".join(vals)])
    return _section("config", "Config", _table(["key", "value"], rows, names=2))


def _value(v: Any) -> str:
    """A config value as the result file spells it (JSON), strings bare."""
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _run_name(ident: Sequence[str]) -> str:
    """A run as ``arch, N CPUs, design`` (and ``, seed S`` when ``_ids`` gives it)."""
    a, n, d, *seed = ident
    return f"{a}, {n} CPUs, {d}" + "".join(f", seed {s}" for s in seed)


def report_html(results: dict[str, Any] | list[dict[str, Any]], source: str) -> str:
    """The page for one Result (``run -o``) or a list of them (``compare -o``);
    ``source`` names the file in the page."""
    single = isinstance(results, dict)
    rs: list[dict[str, Any]] = [results] if isinstance(results, dict) else results
    title, header = _header(rs, single, source)
    sections = [_plots(results, single), _comparison(rs), _distributions(rs, single)]
    if single:
        r = rs[0]
        sections.append(_section("cpus", "CPUs", _rows_table(_cpu_rows(r), total_last=True)))
        sections.append(_section("locks", "Locks", _rows_table(_lock_rows(r), caption=False)))
        sections.append(_section("tlb", "TLB work", _rows_table(tlb_rows(r), caption=False)))
        sections.append(_section("processes", "Processes, memory, reaper", _kv(r, "")))
    else:
        sections.append(_section("cpus", "CPUs", _cpu_totals(rs)))
        sections.append(_section("locks", "Locks", _lock_waits(rs)))
        sections.append(_section("tlb", "TLB work", _tlb_totals(rs)))
        runs = "".join(
            f"<details><summary>{_e(_run_name(ident))}</summary>{_details(r)}</details>"
            for ident, r in zip(_ids(rs), rs, strict=True)
        )
        note = '<p class="note">Per CPU, every lock, TLB work and the counters, per run.</p>'
        sections.append(_section("runs", "Runs in detail", note, runs))
    sections.append(_config(rs))
    nav = "".join(f'<a href="#{ident}">{_e(title)}</a>' for ident, title, _ in sections)
    body = "\n".join(
        f'<section id="{ident}"><h2>{_e(title)}</h2>{html}</section>'
        for ident, title, html in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # An empty icon of its own, so a browser asks no server for /favicon.ico.
        '<link rel="icon" href="data:,">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"{header}\n<nav>{nav}</nav>\n<main>\n"
        + body
        + f"\n</main>\n<footer>Made by exitsim report from {_e(source)}.</footer>\n"
        "</body>\n</html>\n"
    )
