"""exitsim report: one self-contained HTML page from what run -o or compare -o wrote,
with the plots, the distributions, the tables and the config, every time in the unit
it reads best in; a command that runs it again, a process tree's workload file
included; bad input refused in one line, nothing written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from exitsim.cli import main
from exitsim.report.compare import METRIC_HELP, METRICS
from exitsim.report.html import _command
from exitsim.report.plots import format_ns
from tests.clikit import assert_usage_error

SMALL = ["--param", "jobs=3", "--param", "cc1_user_ms=2"]
# A process tree: make, two compilers and a linker after them.
TREE = """format = 1
name = "tiny build"
description = "kept out of the result"

[[process]]
id = 1
program = "make"
user_ms = 4.0
file_pages = 450
anon_pages = 130

[[process]]
id = 2
parent = 1
program = "cc1"
start_ms = 1.0
user_ms = 6.0
file_pages = 900
anon_pages = 700

[[process]]
id = 3
parent = 1
program = "cc1"
start_ms = 1.5
user_ms = 4.5
file_pages = 800
anon_pages = 600

[[process]]
id = 4
parent = 1
program = "ld"
after = [2, 3]
start_ms = 2.0
user_ms = 2.0
file_pages = 300
anon_pages = 200
"""
# Elements HTML never closes.
VOID = {"meta", "link", "br", "hr", "img", "input", "wbr", "col", "source", "area", "base"}


def _quiet_main(argv: list[str]) -> int:
    """``main`` with its stdout swallowed (for module-scoped fixtures, which cannot
    use capsys)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run result, a compare result, and the report of each, made by the commands."""
    d = tmp_path_factory.mktemp("report")
    run = ["run", "--policy", "reaper", "--arch", "arm64", "--cpus", "2", *SMALL]
    assert _quiet_main([*run, "-o", str(d / "r.json")]) == 0
    cmp = ["compare", "--policies", "reaper,purge+pmap_purge", "--cpus", "1,2", *SMALL]
    assert _quiet_main([*cmp, "--workers", "1", "-o", str(d / "c.json")]) == 0
    for name in ("r", "c"):
        assert _quiet_main(["report", str(d / f"{name}.json"), "-o", str(d / f"{name}.html")]) == 0
    return {
        "run": d / "r.json",
        "compare": d / "c.json",
        "run.html": d / "r.html",
        "compare.html": d / "c.html",
    }


class _Page(HTMLParser):
    """Every tag and attribute of a page, and whether its elements nest properly."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def _cells(html: str) -> list[str]:
    """The text of every table cell and heading, tags inside removed."""
    return [
        unescape(re.sub(r"<[^>]+>", "", c))
        for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", html, re.DOTALL)
    ]


@pytest.mark.parametrize("name", ["run.html", "compare.html"])
def test_the_page_is_self_contained_and_well_formed(name: str, files: dict[str, Path]) -> None:
    html = files[name].read_text()
    assert html.startswith("<!DOCTYPE html>")
    page = _parse(html)
    assert page.problems == [] and page.stack == []
    for tag in ("script", "iframe", "object", "embed", "img"):
        assert tag not in page.tags, tag
    # One link: the page's empty icon, so that a browser fetches no /favicon.ico.
    assert page.tags.count("link") == 1 and ("link", "rel", "icon") in page.attrs
    for tag, attr, value in page.attrs:
        if attr == "src" or attr.endswith("href"):
            assert value.startswith(("#", "data:")), (tag, attr, value)
        if "://" in value:  # only the SVG namespace names, which are never fetched
            assert attr.startswith("xmlns"), (tag, attr, value)
        assert not attr.startswith("on"), (tag, attr)
    assert "@import" not in html
    assert re.findall(r"url\((?!#)", html) == []
    # The plots are inline SVG, within the page's one figure.
    assert page.tags.count("svg") == 1 and "figure" in page.tags
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html


def test_a_compare_report_has_the_comparison_cpu_lock_tlb_and_config_tables(
    files: dict[str, Path],
) -> None:
    results = json.loads(files["compare"].read_text())
    html = files["compare.html"].read_text()
    cells = _cells(html)
    assert "<title>exitsim compare: reaper, purge+pmap_purge on arm64, amd64</title>" in html
    for arch in ("arm64", "amd64"):
        for n in (1, 2):
            assert f"{arch}, {n} CPUs, workload build (ratio to reaper)" in html
    for title, _, _ in METRICS:
        # Times are shown in the unit each reads best in: the heading has none.
        heading = title.removesuffix(" us").removesuffix(" ms")
        assert f'title="{METRIC_HELP[title]}">{heading}</th>' in html.replace("&#x27;", "'")
    sections = ("Plots", "Comparison", "Distributions", "CPUs", "Locks", "TLB work")
    for section in (*sections, "Runs in detail"):
        assert f"<h2>{section}</h2>" in html
    for r in results:
        # Each run's TLB work and kernel-lock acquisitions, as the terminal shows them.
        assert str(r["tlb"]["page_invalidations"]) in cells
        assert str(r["locks"]["kernel_lock"]["acquisitions"]) in cells
        # Its wall time in the comparison (a ratio in brackets after it but the baseline's).
        assert format_ns(r["makespan_ns"]) in {c.split("(")[0] for c in cells}
        cfg = r["config"]
        assert f"{cfg['arch']}, {cfg['cpus']} CPUs, {cfg['policy']}</summary>" in html
    config = dict(re.findall(r'<tr><td class="name">([^<]*)</td><td class="name">([^<]*)<', html))
    assert config["policy"] == "reaper; purge+pmap_purge"
    assert config["arch"] == "arm64; amd64"
    assert config["cpus"] == "1; 2"
    assert config["seed"] == "0" and config["granularity"] == "range"
    assert config["workload"] == "build"
    assert config["workload_params"] == "cc1_user_ms=2, jobs=3"


def test_a_run_report_has_per_cpu_lock_tlb_and_counter_tables(files: dict[str, Path]) -> None:
    r = json.loads(files["run"].read_text())
    html = files["run.html"].read_text()
    cells = _cells(html)
    assert "<title>exitsim run: reaper on arm64, 2 CPUs</title>" in html
    for section in ("CPUs", "Locks", "TLB work", "Processes, memory, reaper", "Config"):
        assert f"<h2>{section}</h2>" in html
    assert {"0", "1", "all"} <= set(cells)
    assert set(r["locks"]) <= set(cells)
    for key, value in r["tlb"].items():
        assert key.replace("_", " ") in cells
        assert str(value) in cells
    assert f"{r['processes']['count']:,}" in cells
    assert "processes.charged_sys_ns_mean" in cells
    assert format_ns(r["processes"]["charged_sys_ns_mean"]) in cells
    assert f"wall time {format_ns(r['makespan_ns'])}," in html
    # The distributions as quantiles: exit latency per run, lock waits per lock.
    assert "<h2>Distributions</h2>" in html
    lat = sorted(p["exit_latency_ns"] for p in r["per_process"] if p["exit_latency_ns"])
    assert format_ns(lat[0]) in cells and format_ns(lat[-1]) in cells
    assert format_ns(r["processes"]["exit_latency_ns_p50"]) in cells
    for s in r["locks"].values():
        if s["wait_ns"]:
            assert f"{sum(s['wait_log2_hist']):,}" in cells


@pytest.mark.parametrize("name", ["run.html", "compare.html"])
def test_times_are_shown_in_ms_or_s_not_as_thousands_of_us(
    name: str, files: dict[str, Path]
) -> None:
    """Every time is in the unit it reads best in: no value in us is 1,000 or more
    (nor in ns), none in ms either, except the figure's own tick labels."""
    text = unescape(re.sub(r"<[^>]+>", " ", files[name].read_text()))
    values = re.findall(r"(\d[\d,]*(?:\.\d+)?) ?(ns|us|ms)\b", text)
    assert any(u == "ms" for _, u in values)
    for value, unit in values:
        assert float(value.replace(",", "")) < 1000, f"{value} {unit}"


def test_the_report_says_what_was_run_as_a_command_that_runs_it_again(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    html = files["run.html"].read_text()
    cmd = unescape(re.search(r'<pre class="cmd"><code>(.*?)</code></pre>', html).group(1))
    argv = shlex.split(cmd)
    assert argv[0] == "exitsim"
    assert main([*argv[1:], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(files["run"].read_text())


def test_a_workload_file_result_gives_a_command_and_the_file_that_run_it_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A process tree's result holds the tree, not its file's path: the page gives the
    command with ``--workload NAME.toml`` and that file, written from the tree; saved
    and run, they make the same result."""
    (tmp_path / "mine.toml").write_text(TREE)
    argv = ["compare", "--policies", "reaper,purge", "--arches", "amd64", "--cpus", "1,2"]
    argv += ["--workload", str(tmp_path / "mine.toml"), "--workers", "1", "-q"]
    assert _quiet_main([*argv, "-o", str(tmp_path / "c.json")]) == 0
    assert _quiet_main(["report", str(tmp_path / "c.json"), "-o", str(tmp_path / "c.html")]) == 0
    html = (tmp_path / "c.html").read_text()
    cmd = unescape(re.search(r'<pre class="cmd"><code>(.*?)</code></pre>', html).group(1))
    found = re.search(
        r"<summary>The workload file (\S+) \(4 processes\)</summary>"
        r'.*?<pre class="file"><code>(.*?)</code>',
        html,
        re.DOTALL,
    )
    name, text = found.groups()
    assert name == "tiny-build.toml"
    argv = shlex.split(cmd)
    assert argv[:2] == ["exitsim", "compare"]
    assert argv[argv.index("--workload") + 1] == name
    assert "--param" not in argv
    again = tmp_path / "again"
    again.mkdir()
    (again / name).write_text(unescape(text))
    capsys.readouterr()
    cwd = Path.cwd()
    try:
        os.chdir(again)
        assert main([*argv[1:], "--json"]) == 0
    finally:
        os.chdir(cwd)
    assert json.loads(capsys.readouterr().out) == json.loads((tmp_path / "c.json").read_text())


def test_a_recorded_workload_file_is_named_in_the_command(files: dict[str, Path]) -> None:
    """Where the config names the workload file it came from, the command runs that
    file; a tree that is not a valid one gives no command rather than a wrong one."""
    r = json.loads(files["run"].read_text())
    tree = {"name": "t", "process": [{"id": 1, "program": "make", "user_ms": 1.0}]}
    cfg = r["config"] | {"workload": "tree", "workload_params": tree}
    cmd = _command([r | {"config": cfg | {"workload_file": "builds/mine.toml"}}], True)
    assert cmd is not None and "--workload builds/mine.toml" in cmd
    assert "--workload t.toml" in (_command([r | {"config": cfg}], True) or "")
    broken = cfg | {"workload_params": {"name": "t", "process": [{"id": 1}]}}
    assert _command([r | {"config": broken}], True) is None


def test_the_same_result_gives_the_same_page(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    again = tmp_path / "again.html"
    assert main(["report", str(files["run"]), "-o", str(again)]) == 0
    assert capsys.readouterr() == (f"report: {again} (1 run; open it in a browser)\n", "")
    assert again.read_bytes() == files["run.html"].read_bytes()


def _bad_inputs(run: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """File name -> (its text, what the error must say)."""
    schema2 = run | {"schema": 2}
    no_locks = {k: v for k, v in run.items() if k != "locks"}
    text_wall = run | {"makespan_ns": "1 ms"}
    bad_sample = run | {"series": run["series"] | {"zombies": [[0]]}}
    bad_file = run | {"config": run["config"] | {"policy_file": 5}}
    bad_params = run | {"config": run["config"] | {"workload_params": "jobs=3"}}
    bad_tree = run | {"config": run["config"] | {"workload_params": {"process": None}}}
    return {
        "text.json": ("this is not JSON\n", "not JSON"),
        "cut.json": (json.dumps(run)[:-40], "not JSON"),
        "object.json": ('{"hello": 1}', "not from exitsim run or compare"),
        "number.json": ("42", "not from exitsim run or compare"),
        "empty.json": ("[]", "the list of results is empty"),
        "schema2.json": (json.dumps(schema2), "schema 2"),
        "nolocks.json": (json.dumps(no_locks), "locks"),
        "textwall.json": (json.dumps(text_wall), "makespan_ns is not a JSON integer"),
        "sample.json": (json.dumps(bad_sample), "series zombies"),
        "mixed.json": (json.dumps([run, {"hello": 1}]), "result 1"),
        "check.json": ('[{"scenario": "wait2", "violation": null}]', "result 0"),
        "deep.json": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        "policyfile.json": (json.dumps(bad_file), "policy_file is not a JSON string"),
        "params.json": (json.dumps(bad_params), "workload_params is not a JSON object"),
        "tree.json": (json.dumps(bad_tree), "process is not a JSON array"),
        "known.json": (json.dumps(run | {"known_violations": 3}), "known_violations is not"),
        "zombies.json": (json.dumps(run | {"zombies": [1]}), "zombies is not a JSON object"),
    }


BAD = [
    "text.json",
    "cut.json",
    "object.json",
    "number.json",
    "empty.json",
    "schema2.json",
    "nolocks.json",
    "textwall.json",
    "sample.json",
    "mixed.json",
    "check.json",
    "deep.json",
    "policyfile.json",
    "params.json",
    "tree.json",
    "known.json",
    "zombies.json",
]


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_one_line_naming_the_file_and_nothing_is_written(
    name: str,
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text, needle = _bad_inputs(json.loads(files["run"].read_text()))[name]
    src = tmp_path / name
    src.write_text(text)
    out = tmp_path / "out.html"
    assert_usage_error(["report", str(src), "-o", str(out)], f"{src}: ", capsys)
    main(["report", str(src), "-o", str(out)])
    assert needle in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_an_existing_page_is_left_alone_on_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.html"
    out.write_text("the old page\n")
    assert_usage_error(
        ["report", str(tmp_path / "missing.json"), "-o", str(out)], "missing", capsys
    )
    assert out.read_text() == "the old page\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.html"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["report", "/nonexistent/r.json", "-o", "{tmp}/x.html"], "/nonexistent/r.json: no such"),
        (["report", "{tmp}", "-o", "{tmp}/x.html"], "is a directory"),
        (["report", "{tmp}/r.json"], "-o/--output"),
        (["report", "{tmp}/r.json", "-o", "/nonexistent/x.html"], "/nonexistent does not exist"),
        (["report", "{tmp}/r.json", "-o", "{tmp}/r.json"], "is the result file itself"),
        (["report", "{tmp}/r.json", "-o", "{tmp}"], "is a directory"),
    ],
)
def test_bad_usage_of_report_is_one_line_and_exit_status_2(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r.json").write_text("{}")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert_usage_error(argv, needle, capsys)
    assert (tmp_path / "r.json").read_text() == "{}"
    assert not (tmp_path / "x.html").exists()
