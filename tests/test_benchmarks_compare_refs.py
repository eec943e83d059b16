"""`benchmarks.compare_refs`: its order of runs and its ratio arithmetic (no process is started, no timing asserted)."""

import pytest

from benchmarks.compare_refs import abba, format_table, scenario_keys, summarise


def _run(count, seconds, cpu):
    return {"count": count, "seconds": seconds, "cpu_seconds": cpu, "children_cpu_seconds": 0.0}


def _round(a_rate, b_rate, a_ms, b_ms, refs=("A", "B")):
    """One round: 10 s start-up, then 1,000 and 5,000 records at the given rates and CPU ms per record."""

    def sizes(rate, ms):
        return {"small": _run(1000, 10 + 1000 / rate, 5 + ms), "large": _run(5000, 10 + 5000 / rate, 5 + 5 * ms)}

    return {refs[0]: sizes(a_rate, a_ms), refs[1]: sizes(b_rate, b_ms)}


def test_refs_alternate_abba_so_drift_hits_both_alike():
    assert [abba(k, ["A", "B"]) for k in range(4)] == [["A", "B"], ["B", "A"], ["A", "B"], ["B", "A"]]


def test_scenario_names_map_to_harness_keys_and_unknown_ones_are_refused():
    assert scenario_keys("text,image,c,b") == ["c", "a", "b"]
    with pytest.raises(SystemExit, match="unknown scenario 'audio'"):
        scenario_keys("text,audio")


def test_ratio_is_the_median_of_the_rounds_own_ratios_with_their_spread():
    rounds = [_round(100, 95, 2.0, 2.2), _round(50, 50, 4.0, 4.0), _round(80, 88, 2.0, 1.8)]
    s = summarise(rounds, ["A", "B"])
    assert [p["rate_b_over_a"] for p in s["rounds"]] == pytest.approx([0.95, 1.0, 1.1])
    assert s["rate_b_over_a"]["median"] == pytest.approx(1.0)
    assert (s["rate_b_over_a"]["min"], s["rate_b_over_a"]["max"]) == pytest.approx((0.95, 1.1))
    assert s["rate"]["A"]["median"] == pytest.approx(80)  # each ref's median rate, start-up cancelled
    assert s["cpu_ms_per_record"]["B"]["median"] == pytest.approx(2.2)
    assert s["cpu_b_over_a"]["median"] == pytest.approx(1.0)
    assert (s["cpu_b_over_a"]["min"], s["cpu_b_over_a"]["max"]) == pytest.approx((0.9, 1.1))


def test_a_round_without_a_rate_is_left_out_not_counted_as_zero():
    noisy = _round(100, 100, 2.0, 2.0)
    noisy["B"]["large"]["seconds"] = noisy["B"]["small"]["seconds"] - 1  # the large run was not slower: no rate
    s = summarise([noisy, _round(100, 90, 2.0, 2.0)], ["A", "B"])
    assert s["rounds"][0]["rate_b_over_a"] is None
    assert s["rate_b_over_a"] == {"median": pytest.approx(0.9), "min": pytest.approx(0.9), "max": pytest.approx(0.9), "n": 1}


def test_table_names_both_commits_the_ratio_and_the_load():
    shas = ["a" * 40, "b" * 40]
    report = {
        "started_at": "2026-12-04T21:00:00+00:00",
        "refs": [["old", "a" * 40], ["new", "b" * 40]],
        "repeat": 2,
        "environment": {"cpus": 2},
        "scenarios": {
            "c": {
                "title": "text",
                "batch": 256,
                "sizes": {"small": 1000, "large": 5000},
                "summary": summarise([_round(100, 95, 2.0, 2.2, shas), _round(100, 105, 2.0, 2.0, shas)], shas),
            }
        },
        "load": {"min": 0.5, "median": 1.5, "max": 3.0, "n": 8},
    }
    table = format_table(report)
    assert "A = old (aaaaaaaaaaaa), B = new (bbbbbbbbbbbb)" in table
    assert "B/A 1.000 (rounds 0.950..1.050)" in table
    assert "round 2 (BA)" in table
    assert "median 1.50, max 3.00" in table
