"""``exitsim costs``: the cost profile in use, every value with its meaning and source."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from exitsim.cli import main
from exitsim.machine.costs import COST_KEYS, builtin_profile, source_kind
from tests.clikit import assert_usage_error

ARCHES = ["amd64", "arm64"]


def costs_out(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["costs", *argv]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def assumptions(arch: str) -> int:
    """Counted straight from the shipped file's sources, not through the CLI's code."""
    return sum(s.startswith("assumption") for s in builtin_profile(arch).sources.values())


@pytest.mark.parametrize("arch", ARCHES)
def test_text_names_every_key_with_its_value_meaning_and_source(
    arch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = costs_out(["--arch", arch], capsys)
    prof = builtin_profile(arch)
    assert f"# arch {arch}" in out and f"# profile {prof.path}" in out
    lines = out.splitlines()
    for key, meaning in COST_KEYS.items():
        value = getattr(prof.costs, key)
        kind = source_kind(prof.sources[key])
        i = lines.index(f"{key} = {value:,} ns  [{kind}]")
        assert lines[i + 1] == f"    {meaning}"
        assert lines[i + 2] == f"    source: {prof.sources[key]}"
    assert lines[-1] == f"{arch}: {assumptions(arch)} of {len(COST_KEYS)} values are assumptions"


def test_by_default_both_arches_are_shown_amd64_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = costs_out([], capsys)
    assert out.index("# arch amd64") < out.index("# arch arm64")
    summaries = [line for line in out.splitlines() if line.endswith("values are assumptions")]
    n = len(COST_KEYS)
    assert summaries == [
        f"amd64: {assumptions('amd64')} of {n} values are assumptions",
        f"arm64: {assumptions('arm64')} of {n} values are assumptions",
    ]


def test_json_has_every_cost_key_with_its_source_and_kind(
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = json.loads(costs_out(["--json"], capsys))
    assert [d["arch"] for d in data] == ARCHES
    for d in data:
        prof = builtin_profile(d["arch"])
        assert (d["description"], d["path"]) == (prof.description, prof.path)
        assert list(d["costs"]) == list(COST_KEYS)
        for key, c in d["costs"].items():
            assert c == {
                "value": getattr(prof.costs, key),
                "unit": "ns",
                "meaning": COST_KEYS[key],
                "source": prof.sources[key],
                "kind": c["kind"],
            }
            assert c["kind"] in ("assumption", "sourced", "measured")
            assert (c["kind"] == "assumption") == prof.sources[key].startswith("assumption")
        assert d["assumptions"] == assumptions(d["arch"])
        assert d["assumptions"] == sum(c["kind"] == "assumption" for c in d["costs"].values())


def test_a_profile_file_is_shown_and_a_measured_source_is_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = resources.files("exitsim.machine").joinpath("profiles", "arm64.toml").read_text()
    old = 'value = 2_000\nsource = "assumption: a few microseconds'
    assert old in text
    text = text.replace(old, 'value = 1_500\nsource = "measured here by lat_ctx; was: a few', 1)
    prof = tmp_path / "mine.toml"
    prof.write_text(text)
    data = json.loads(costs_out(["--profile", str(prof), "--json"], capsys))
    assert [d["path"] for d in data] == [str(prof)]
    ctxsw = data[0]["costs"]["ctxsw_ns"]
    assert (ctxsw["value"], ctxsw["kind"]) == (1_500, "measured")
    assert data[0]["assumptions"] == assumptions("arm64") - 1
    out = costs_out(["--profile", str(prof), "--arch", "arm64"], capsys)
    assert "ctxsw_ns = 1,500 ns  [measured]" in out


def test_a_bad_profile_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = resources.files("exitsim.machine").joinpath("profiles", "amd64.toml").read_text()
    prof = tmp_path / "broken.toml"
    prof.write_text(text.replace("[costs.lock_handoff_ns]", "[costs.lock_handof_ns]", 1))
    assert_usage_error(["costs", "--profile", str(prof)], str(prof), capsys)
    assert_usage_error(["costs", "--profile", str(tmp_path / "none.toml")], "none.toml", capsys)


def test_a_profile_for_another_arch_than_asked_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = resources.files("exitsim.machine").joinpath("profiles", "arm64.toml").read_text()
    prof = tmp_path / "arm.toml"
    prof.write_text(text)
    assert_usage_error(
        ["costs", "--profile", str(prof), "--arch", "amd64"], "profile is for arm64", capsys
    )
    assert_usage_error(["costs", "--arch", "mips"], "--arch", capsys)
