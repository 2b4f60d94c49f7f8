"""Cost profiles (machine/costs.py and machine/profiles/*.toml).

Every number the simulator charges comes from a profile, and every number there carries
its source (style.md: "No cost number without a source or a stated assumption beside it
in the profile"). A malformed profile is refused with one line naming the file and key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from exitsim.machine.costs import (
    COST_KEYS,
    CostProfile,
    CostProfileError,
    Costs,
    builtin_profile,
    load_profile,
    parse_profile,
)

ARCHES = ["amd64", "arm64"]
SOURCE_PREFIXES = ("cost-anchors row", "OpenBSD", "measured here by", "assumption", "not used")
NAME = "test-profile.toml"


def profile_toml(
    *,
    arch: str | None = "amd64",
    skip: str | None = None,
    override: dict[str, str] | None = None,
    extra: str = "",
) -> str:
    """A valid profile as TOML text: every key of COST_KEYS with value 1 and a source.
    ``skip`` leaves a key out, ``override`` replaces a key's table body, ``extra`` is
    appended."""
    override = override or {}
    lines = ["[profile]"]
    if arch is not None:
        lines.append(f'arch = "{arch}"')
    lines.append('description = "test"')
    for key in COST_KEYS:
        if key == skip:
            continue
        lines.append(f"[costs.{key}]")
        lines.append(override.get(key, 'value = 1\nsource = "assumption: test"'))
    return "\n".join(lines) + "\n" + extra


def refused(text: str) -> str:
    """The one-line message parse_profile refuses ``text`` with."""
    with pytest.raises(CostProfileError) as info:
        parse_profile(text, NAME)
    msg = str(info.value)
    assert "\n" not in msg
    assert NAME in msg
    return msg


# -- the shipped profiles -----------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_builtin_profile_loads_for_each_arch(arch: str) -> None:
    """Both arches of openbsd-exit-path.md sections 5 and 6 ship a profile for their
    own arch."""
    prof = builtin_profile(arch)
    assert isinstance(prof, CostProfile)
    assert prof.arch == arch
    assert prof.description
    assert isinstance(prof.costs, Costs)
    assert prof.path == f"profiles/{arch}.toml"


@pytest.mark.parametrize("arch", ARCHES)
def test_builtin_profile_gives_every_cost_key_with_a_nonnegative_int(arch: str) -> None:
    """A profile must give every key of COST_KEYS, each a non-negative integer."""
    costs = builtin_profile(arch).costs
    for key in COST_KEYS:
        v = getattr(costs, key)
        assert isinstance(v, int) and not isinstance(v, bool), key
        assert v >= 0, key
    assert costs.quantum_ns > 0


@pytest.mark.parametrize("arch", ARCHES)
def test_builtin_profile_cites_a_source_of_an_accepted_kind_for_every_cost(arch: str) -> None:
    """Every shipped number says where it comes from: a cost-anchors row, an OpenBSD
    file, a measurement here, a stated assumption, or that the arch does not use it."""
    sources = builtin_profile(arch).sources
    assert list(sources) == list(COST_KEYS)
    bad = {k: s for k, s in sources.items() if not s.strip() or not s.startswith(SOURCE_PREFIXES)}
    assert bad == {}


def test_builtin_quantum_is_openbsd_roundrobin_100ms() -> None:
    """OpenBSD sched_bsd.c: roundrobin every hz/10 ticks, i.e. 100 ms on both arches."""
    for arch in ARCHES:
        assert builtin_profile(arch).costs.quantum_ns == 100_000_000


def test_amd64_profile_charges_no_broadcast_tlbi() -> None:
    """amd64 has no broadcast TLB invalidation in OpenBSD (shootdowns go by IPI), so its
    broadcast costs are zero and marked as not used; arm64's are not zero."""
    amd = builtin_profile("amd64")
    assert amd.costs.tlbi_ns == 0
    assert amd.costs.tlbi_per_sender_ns == 0
    assert amd.sources["tlbi_ns"].startswith("not used")
    assert builtin_profile("arm64").costs.tlbi_ns > 0


def test_builtin_profile_for_unknown_arch_is_refused() -> None:
    """Only shipped arches have a built-in profile."""
    with pytest.raises(CostProfileError, match="no built-in cost profile for arch 'vax'"):
        builtin_profile("vax")


def test_costs_fields_follow_cost_keys_in_order() -> None:
    """Costs has one field per COST_KEYS entry, in the same order."""
    assert [f.name for f in dataclasses.fields(Costs)] == list(COST_KEYS)


# -- parse_profile ----------------------------------------------------------------------


def test_parse_profile_accepts_a_complete_profile() -> None:
    """The helper's profile is valid: values, sources and arch come through."""
    prof = parse_profile(
        profile_toml(arch="arm64", override={"ctxsw_ns": 'value = 2_000\nsource = " x "'}),
        NAME,
    )
    assert prof.arch == "arm64"
    assert prof.path == NAME
    assert prof.costs.ctxsw_ns == 2000
    assert prof.costs.quantum_ns == 1
    assert prof.sources["ctxsw_ns"] == "x"
    assert prof.sources["tlbi_ns"] == "assumption: test"


def test_parse_profile_refuses_an_unknown_cost_key() -> None:
    """A key outside COST_KEYS is a typo or a stale number: refused by name."""
    msg = refused(profile_toml(extra='[costs.ctxsw_us]\nvalue = 2\nsource = "assumption"\n'))
    assert "costs.ctxsw_us" in msg


@pytest.mark.parametrize("key", ["quantum_ns", "ctxsw_ns", "kernel_lock_section_ns"])
def test_parse_profile_refuses_a_missing_cost_key(key: str) -> None:
    """Every key of COST_KEYS must be given; the first missing one is named."""
    msg = refused(profile_toml(skip=key))
    assert f"costs.{key}" in msg
    assert "missing" in msg


def test_parse_profile_refuses_a_negative_value() -> None:
    """Costs are non-negative nanoseconds."""
    msg = refused(profile_toml(override={"ctxsw_ns": 'value = -1\nsource = "assumption"'}))
    assert "costs.ctxsw_ns" in msg
    assert "negative" in msg


@pytest.mark.parametrize(
    "value",
    ["1.5", '"2000"', "true", "false", "[1]"],
    ids=["float", "str", "true", "false", "list"],
)
def test_parse_profile_refuses_a_non_integer_value(value: str) -> None:
    """Values are integers (time is integer ns); a TOML bool is not an integer here,
    although Python's bool is an int."""
    body = f'value = {value}\nsource = "assumption"'
    msg = refused(profile_toml(override={"ctxsw_ns": body}))
    assert "costs.ctxsw_ns" in msg
    assert "integer" in msg


def test_parse_profile_refuses_a_missing_value() -> None:
    """A cost table without a value gives no number."""
    msg = refused(profile_toml(override={"ipi_send_ns": 'source = "assumption"'}))
    assert "costs.ipi_send_ns" in msg


@pytest.mark.parametrize(
    "body",
    ["value = 1", 'value = 1\nsource = ""', 'value = 1\nsource = "   "', "value = 1\nsource = 3"],
    ids=["absent", "empty", "blank", "not-a-string"],
)
def test_parse_profile_refuses_a_cost_without_a_source(body: str) -> None:
    """No cost number without a source or a stated assumption (style.md)."""
    msg = refused(profile_toml(override={"ctxsw_ns": body}))
    assert "costs.ctxsw_ns" in msg
    assert "source" in msg


def test_parse_profile_refuses_an_unknown_key_inside_a_cost() -> None:
    """A cost table holds only value and source."""
    body = 'value = 1\nsource = "assumption"\nunit = "ns"'
    msg = refused(profile_toml(override={"ctxsw_ns": body}))
    assert "costs.ctxsw_ns.unit" in msg


def test_parse_profile_refuses_a_cost_that_is_not_a_table() -> None:
    """``ctxsw_ns = 5`` under [costs] lacks its source: it must be a table."""
    text = profile_toml(skip="ctxsw_ns").replace(
        "[costs.quantum_ns]", "[costs]\nctxsw_ns = 5\n[costs.quantum_ns]"
    )
    msg = refused(text)
    assert "costs.ctxsw_ns" in msg


def test_parse_profile_refuses_an_unknown_top_level_table() -> None:
    """Only [profile] and [costs] exist."""
    msg = refused(profile_toml(extra="[tuning]\nx = 1\n"))
    assert "[tuning]" in msg


def test_parse_profile_refuses_an_unknown_profile_key() -> None:
    """[profile] holds arch and description only."""
    text = profile_toml().replace('description = "test"', 'description = "test"\nncpu = 4')
    msg = refused(text)
    assert "profile.ncpu" in msg


def test_parse_profile_refuses_malformed_toml_with_its_position() -> None:
    """Malformed TOML is refused in one line that says where the parser stopped."""
    msg = refused(profile_toml() + "[costs.ctxsw_ns\n")
    assert "not valid TOML" in msg
    assert "line" in msg


@pytest.mark.parametrize(
    "text",
    [profile_toml(arch=None), profile_toml().replace('arch = "amd64"', "arch = 64")],
    ids=["absent", "not-a-string"],
)
def test_parse_profile_refuses_a_profile_without_arch(text: str) -> None:
    """A profile must say which arch it is for ([profile] arch)."""
    msg = refused(text)
    assert "[profile]" in msg
    assert "arch" in msg


def test_parse_profile_refuses_a_missing_profile_table() -> None:
    """Without [profile] there is no arch."""
    msg = refused(profile_toml().replace('[profile]\narch = "amd64"\ndescription = "test"\n', ""))
    assert "[profile]" in msg
    assert "arch" in msg


def test_parse_profile_refuses_a_missing_costs_table() -> None:
    """A profile without [costs] gives no numbers."""
    msg = refused('[profile]\narch = "amd64"\n')
    assert "[costs]" in msg


def test_parse_profile_refuses_a_zero_quantum() -> None:
    """A zero time slice would preempt forever; the engine needs quantum_ns > 0."""
    msg = refused(profile_toml(override={"quantum_ns": 'value = 0\nsource = "assumption"'}))
    assert "costs.quantum_ns" in msg


# -- load_profile ----------------------------------------------------------------------


def test_load_profile_reads_a_file_and_names_it_as_its_path(tmp_path) -> None:
    """load_profile is parse_profile on the file's text, named by its path."""
    path = tmp_path / "mine.toml"
    path.write_text(profile_toml(arch="arm64"), encoding="utf-8")
    prof = load_profile(path)
    assert prof.arch == "arm64"
    assert prof.path == str(path)


def test_load_profile_names_the_path_of_a_malformed_file(tmp_path) -> None:
    """Errors in a file name that file and the key."""
    path = tmp_path / "bad.toml"
    path.write_text(profile_toml(skip="tlbi_ns"), encoding="utf-8")
    with pytest.raises(CostProfileError) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert "costs.tlbi_ns" in str(info.value)


def test_load_profile_refuses_a_missing_file_naming_its_path(tmp_path) -> None:
    """A profile that cannot be read is a CostProfileError naming the path, in one
    line, not an OSError with a traceback."""
    path = tmp_path / "nope" / "missing.toml"
    with pytest.raises(CostProfileError) as info:
        load_profile(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "cannot read" in msg
    assert "\n" not in msg


def test_cost_profile_error_is_a_value_error() -> None:
    """Callers that treat bad input as ValueError (usage errors, exit code 2) catch it."""
    assert issubclass(CostProfileError, ValueError)


def test_a_profile_that_is_not_text_is_refused_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe arch = 1\n")
    with pytest.raises(CostProfileError, match=r"bad\.toml: not UTF-8 text"):
        load_profile(bad)
