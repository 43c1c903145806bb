"""What crosses component boundaries: built once, and validated on every read."""

from __future__ import annotations

import math

import pytest

from parkfleet.contract import (
    CARS_CONDITION,
    EXIT_BAD_SPEC,
    EXIT_FAILED,
    EXIT_MODEL,
    EXIT_RETRY_ELSEWHERE,
    MAX_SUMMARY_CARS,
    REASON_INVALID_INPUT,
    REASON_UNSUPPORTED,
    CarCounts,
    TerminationSummary,
    cars_condition_message,
    cell_id,
    cell_of_node,
    exit_code,
    node_name,
    parse_cars_condition,
    parse_cell_id,
)


def test_cell_and_node_ids_round_trip() -> None:
    for pool, index in [("demo", 0), ("eu-west-1", 12), ("a.b", 3)]:
        cell = cell_id(pool, index)
        assert parse_cell_id(cell) == (pool, index)
        assert cell_of_node(node_name(cell)) == cell
    assert node_name("eu-3") == "pf-eu-3"


@pytest.mark.parametrize("bad", ["", "eu", "eu-", "-3", "eu-x", "eu-03", "EU-1", "eu-1-"])
def test_what_is_not_a_cell_id_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a cell id"):
        parse_cell_id(bad)
    assert cell_of_node("pf-" + bad) is None


def test_nodes_that_are_not_cells_have_no_cell() -> None:
    assert cell_of_node("worker-1") is None
    assert cell_of_node("pf-") is None


def test_exit_codes_say_who_is_at_fault() -> None:
    assert exit_code("NoEligibleCar") == exit_code("CarLost") == EXIT_RETRY_ELSEWHERE
    assert exit_code("ModelHashMismatch") == exit_code("ModelLoadFailed") == EXIT_MODEL
    assert exit_code(REASON_UNSUPPORTED) == exit_code(REASON_INVALID_INPUT) == EXIT_BAD_SPEC
    assert exit_code("SomethingElse") == EXIT_FAILED


def test_a_summary_round_trips() -> None:
    s = TerminationSummary.of(500, ["b", "a", "b", ""], 2, 0.125, True, 1)
    assert s.cars == ("a", "b")
    assert TerminationSummary.from_json(s.to_json()) == s
    cached = TerminationSummary.of(3, (), 0, 0.0, False, 0, cached=True)
    assert TerminationSummary.from_json(cached.to_json()).cached


def test_a_summary_from_gateway_figures_is_always_writable() -> None:
    for energy in (math.inf, -math.inf, math.nan, -1.0):
        s = TerminationSummary.of(1, [], 0, energy, False, 0)
        assert s.energy_wh == 0.0
        TerminationSummary.from_json(s.to_json())
    many = [f"car-{i}" for i in range(MAX_SUMMARY_CARS * 2)]
    assert len(TerminationSummary.of(1, many, 0, 0.0, False, 0).cars) == MAX_SUMMARY_CARS
    assert len(TerminationSummary.of(1, ["x" * 500], 0, 0.0, False, 0).cars[0]) == 128


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"items": 1, "energyWh": NaN}', "NaN"),
        ('{"items": 1, "energyWh": -1}', "energyWh"),
        ('{"items": 1, "energyWh": "1"}', "energyWh"),
        ('{"items": 1, "moves": 1.5}', "moves"),
        ('{"items": true}', "items"),
        ('{"moves": 1}', "items"),
        ('{"items": 1, "cars": {"a": 1}}', "cars"),
        ('{"items": 1, "cars": [""]}', "cars[0]"),
        ('{"items": 1, "energyModelled": 1}', "energyModelled"),
        ('{"items": 1, "price": 3}', "price"),
        ("[]", "JSON object"),
        ("{", "termination summary"),
    ],
)
def test_a_bad_summary_is_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        TerminationSummary.from_json(text)


def test_the_cars_condition_round_trips_and_refuses_garbage() -> None:
    counts = CarCounts(
        cars_connected=40, cars_eligible=12, cars_busy=3, gpus=12, max_gpu_memory_mib=8192
    )
    cond = {"type": CARS_CONDITION, "message": cars_condition_message(counts)}
    assert parse_cars_condition([{"type": "Ready"}, cond]) == counts
    assert parse_cars_condition([{"type": "Ready"}]) is None
    with pytest.raises(ValueError, match="key=count"):
        parse_cars_condition([{"type": CARS_CONDITION, "message": "connected=-1"}])
