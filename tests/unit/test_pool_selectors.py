"""Which pool a car joins when several selectors match it, and the pools' SelectorOverlap.

The rule (``parkfleet.api.poolmatch``): the most specific selector wins, a tie or
incomparable selectors refuse the car; names and floors never decide.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping

import pytest

from parkfleet.api import FleetPoolSpec
from parkfleet.api.poolmatch import PoolOverlap, choose_pool, pool_overlaps
from parkfleet.controller.fleetpool import (
    OVERLAP_AMBIGUOUS,
    OVERLAP_CONDITION,
    OVERLAP_NONE,
    OVERLAP_SHADOWED,
    OVERLAP_SHADOWS,
    overlap_condition,
    pool_status,
)
from parkfleet.gateway.cells import UNPOOLED, pool_cell_of


def pool(
    name: str, min_soc: float = 0, cells: int = 1, cell_size: int = 10, **sel: str
) -> FleetPoolSpec:
    return FleetPoolSpec.from_k8s(
        {
            "metadata": {"name": name},
            "spec": {
                "cellSize": cell_size,
                "cells": cells,
                "selector": {"matchAttributes": sel},
                "policyFloor": {"minBatteryPercent": min_soc, "onlyWhilePluggedIn": min_soc > 0},
            },
        }
    )


STRICT = pool("strict", min_soc=50, region="eu", hw="orin")
LOOSE = pool("aaa", min_soc=0)  # empty selector, loose floor, and first by name
SOLO = pool("solo", region="us", hw="x")
CAR = {"region": "eu", "hw": "orin", "model": "x"}


def names(choice_pools: Mapping[str, PoolOverlap], attr: str) -> dict[str, set[str]]:
    return {n: set(getattr(o, attr)) for n, o in choice_pools.items() if getattr(o, attr)}


# ---- the rule ------------------------------------------------------------------------


def test_the_strict_superset_wins_whatever_the_names_and_floors() -> None:
    mid = pool("mmm", region="eu")
    for order in itertools.permutations([LOOSE, mid, STRICT]):
        assert choose_pool(CAR, order).pool == STRICT
    placed = pool_cell_of("car-1", CAR, [LOOSE, STRICT])
    assert (placed.pool, placed.cell, placed.floor) == ("strict", "strict-0", STRICT.floor)
    assert not placed.refused
    # A car the strict pool does not select still goes to the less specific ones.
    assert choose_pool({"region": "eu"}, [LOOSE, mid, STRICT]).pool == mid
    assert choose_pool({"region": "us"}, [LOOSE, mid, STRICT]).pool == LOOSE


def test_an_empty_selector_takes_every_car_alone_and_loses_to_any_other() -> None:
    assert choose_pool({}, [LOOSE]).pool == LOOSE
    assert choose_pool({"anything": "1"}, [LOOSE]).pool == LOOSE
    by_name = pool("p", pool="p")
    assert choose_pool({"pool": "p"}, [LOOSE, by_name]).pool == by_name


def test_one_pool_matches_or_none_does() -> None:
    assert choose_pool(CAR, [STRICT]).pool == STRICT
    none = choose_pool({"region": "us"}, [STRICT])
    assert (none.pool, none.refused, none.contenders) == (None, False, ())
    assert choose_pool(CAR, []).pool is None
    placed = pool_cell_of("car-1", {"region": "us"}, [STRICT])
    assert (placed.pool, placed.cell, placed.refused) == (UNPOOLED, UNPOOLED, False)


def test_equal_selectors_are_a_tie_and_the_car_is_refused() -> None:
    twin = pool("twin", region="eu", hw="orin")
    for order in ([STRICT, twin, LOOSE], [LOOSE, twin, STRICT]):
        choice = choose_pool(CAR, order)
        assert choice.pool is None
        assert choice.refused
        assert choice.contenders == ("strict", "twin")  # the empty selector is no contender
    placed = pool_cell_of("car-1", CAR, [STRICT, twin, LOOSE])
    assert (placed.pool, placed.cell, placed.floor) == (UNPOOLED, UNPOOLED, None)
    assert placed.contenders == ("strict", "twin")


def test_incomparable_selectors_refuse_unless_a_third_contains_both() -> None:
    region = pool("by-region", region="eu")
    model = pool("by-model", model="x")
    choice = choose_pool(CAR, [region, model, LOOSE])
    assert (choice.pool, choice.contenders) == (None, ("by-model", "by-region"))
    # Cars with only one of the two attributes are not in doubt.
    assert choose_pool({"region": "eu"}, [region, model]).pool == region
    # More keys alone do not win: the selector must contain each other one.
    wide = pool("wide", hw="orin", model="x")
    assert choose_pool(CAR, [region, wide]).contenders == ("by-region", "wide")
    both = pool("both", region="eu", model="x")
    assert choose_pool(CAR, [region, model, both, LOOSE]).pool == both


def test_a_full_pool_does_not_hand_its_cars_to_a_less_specific_one() -> None:
    small = pool("small", cell_size=1, region="eu", hw="orin")
    placed = pool_cell_of("car-2", CAR, [LOOSE, small], lambda cell: 1)
    assert (placed.pool, placed.refused) == (UNPOOLED, False)


# ---- the overlaps, from the pools alone ----------------------------------------------


def test_a_loose_pool_is_shadowed_and_the_strict_one_shadows_it() -> None:
    got = pool_overlaps([LOOSE, STRICT])
    assert names(got, "shadowed_by") == {"aaa": {"strict"}}
    assert names(got, "shadows") == {"strict": {"aaa"}}
    assert names(got, "ambiguous_with") == {}


def test_equal_selectors_are_ambiguous_on_both_pools() -> None:
    twin = pool("twin", region="eu", hw="orin")
    got = pool_overlaps([STRICT, twin, LOOSE])
    assert names(got, "ambiguous_with") == {"strict": {"twin"}, "twin": {"strict"}}
    assert got["strict"].refused == [{"hw": "orin", "region": "eu"}]
    assert names(got, "shadowed_by") == {"aaa": {"strict", "twin"}}


def test_incomparable_selectors_are_ambiguous_unless_resolved() -> None:
    region = pool("by-region", region="eu")
    model = pool("by-model", model="x")
    got = pool_overlaps([region, model])
    assert names(got, "ambiguous_with") == {"by-region": {"by-model"}, "by-model": {"by-region"}}
    assert got["by-model"].refused == [{"model": "x", "region": "eu"}]
    both = pool("both", region="eu", model="x")
    resolved = pool_overlaps([region, model, both])
    assert names(resolved, "ambiguous_with") == {}
    assert names(resolved, "shadowed_by") == {"by-region": {"both"}, "by-model": {"both"}}


def test_selectors_that_disagree_on_a_value_never_overlap() -> None:
    got = pool_overlaps([pool("eu", region="eu"), pool("us", region="us")])
    assert not any(o.overlaps for o in got.values())
    assert pool_overlaps([STRICT]) == {"strict": PoolOverlap()}
    assert pool_overlaps([]) == {}


@pytest.mark.parametrize("seed", range(40))
def test_the_overlaps_say_exactly_what_placement_does_to_every_car(seed: int) -> None:
    # Pools over a small universe of attributes; every possible car is tried.
    rng = random.Random(seed)
    keys, values = ("a", "b", "c"), ("1", "2")
    pools = []
    for i in range(rng.randint(1, 6)):
        sel = {k: rng.choice(values) for k in keys if rng.random() < 0.5}
        pools.append(pool(f"p{i}", **sel))
    cars = [
        {k: v for k, v in zip(keys, combo, strict=True) if v}
        for combo in itertools.product(("", *values), repeat=len(keys))
    ]
    ambiguous: dict[str, set[str]] = {}
    shadowed: dict[str, set[str]] = {}
    shadows: dict[str, set[str]] = {}
    for car in cars:
        choice = choose_pool(car, pools)
        matching = [p for p in pools if p.matches(car)]
        for p in matching:
            if p.name in choice.contenders:
                ambiguous.setdefault(p.name, set()).update(set(choice.contenders) - {p.name})
            elif choice.pool is not None and p is not choice.pool:
                shadowed.setdefault(p.name, set()).add(choice.pool.name)
                shadows.setdefault(choice.pool.name, set()).add(p.name)
            elif choice.pool is None:
                shadowed.setdefault(p.name, set()).update(
                    c.name
                    for c in matching
                    if c.name in choice.contenders
                    and c.match_attributes.keys() > p.match_attributes.keys()
                )
    got = pool_overlaps(pools)
    assert names(got, "ambiguous_with") == {k: v for k, v in ambiguous.items() if v}
    assert names(got, "shadowed_by") == {k: v for k, v in shadowed.items() if v}
    assert names(got, "shadows") == shadows
    for name, overlap in got.items():
        for refused in overlap.refused:
            assert name in choose_pool(refused, pools).contenders


# ---- the condition -------------------------------------------------------------------


def test_the_condition_says_which_pools_and_why() -> None:
    twin = pool("twin", region="eu", hw="orin")
    got = pool_overlaps([STRICT, twin, LOOSE, SOLO])

    amb = overlap_condition(got["strict"], 3)
    assert (amb["type"], amb["status"], amb["reason"]) == (
        OVERLAP_CONDITION,
        "True",
        OVERLAP_AMBIGUOUS,
    )
    assert amb["observedGeneration"] == 3
    assert "twin" in amb["message"]
    assert "hw=orin,region=eu" in amb["message"]
    # Tied, it takes none of those cars from aaa: it shadows nothing.
    assert "less specific" not in amb["message"]

    shadowed = overlap_condition(got["aaa"], 1)
    assert (shadowed["status"], shadowed["reason"]) == ("True", OVERLAP_SHADOWED)
    assert "more specific pools solo, strict, twin " in shadowed["message"]

    winner = overlap_condition(pool_overlaps([STRICT, LOOSE])["strict"], 1)
    assert (winner["status"], winner["reason"]) == ("True", OVERLAP_SHADOWS)
    assert "aaa" in winner["message"]

    alone = overlap_condition(pool_overlaps([STRICT, twin, SOLO])["solo"], 1)
    assert (alone["status"], alone["reason"]) == ("False", OVERLAP_NONE)


def test_the_condition_names_a_bounded_number_of_pools() -> None:
    many = [pool(f"p{i:02d}", region="eu") for i in range(25)]
    cond = overlap_condition(pool_overlaps(many)["p00"], 1)
    assert cond["reason"] == OVERLAP_AMBIGUOUS
    assert "p10" in cond["message"]
    assert "p11" not in cond["message"]
    assert "and 14 more" in cond["message"]


def test_the_pool_status_carries_the_condition_even_without_cars() -> None:
    status = pool_status(LOOSE, 2, {}, pool_overlaps([LOOSE, STRICT])["aaa"])
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type[OVERLAP_CONDITION]["reason"] == OVERLAP_SHADOWED
    assert status["conditions"][0]["type"] == "Ready"
    plain = {c["type"]: c for c in pool_status(LOOSE, 2, {})["conditions"]}
    assert plain[OVERLAP_CONDITION]["status"] == "False"
