"""Which FleetPool a car joins when several pools' selectors match it, and where they overlap.

The rule, one pure function (:func:`choose_pool`) that the gateway places cars by and the
operator derives the pools' ``SelectorOverlap`` condition from:

- A pool's selector matches a car when each key of its ``matchAttributes`` is in the car's
  certificate with that value; an empty selector matches every car.
- Of the pools that match, the car joins the one whose selector **strictly contains** each
  other matching selector (all of its key/value pairs and at least one more): the most
  specific pool wins. An empty selector is the least specific of all.
- When no matching pool's selector does, the car is **refused**: it waits unpooled. That is
  the case for two pools with equal selectors (a tie) and for selectors neither of which
  contains the other (``region=eu`` and ``model=x`` for a car with both) when no third pool
  contains both. Names, creation order and floors never decide: a new pool cannot take cars
  that a more specific pool, or an equally specific one, selects.

Matching selectors are subsets of one car's attributes, so two of them never disagree on a
key's value, and "contains" comes down to the subset order of their keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from parkfleet.api.fleetpool import FleetPoolSpec

__all__ = ["PoolChoice", "PoolOverlap", "choose_pool", "pool_overlaps"]


@dataclass(frozen=True)
class PoolChoice:
    """The pool a car joins, or why it joins none.

    Attributes:
        pool: The pool the car joins; None when no pool matches or the car is refused.
        contenders: When refused: the matching pools whose selectors no other matching
            selector strictly contains (the ones that tie), by name; empty otherwise.
    """

    pool: FleetPoolSpec | None
    contenders: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        """Whether pools match the car but none is the most specific."""
        return bool(self.contenders)


def _strictly_contains(outer: Mapping[str, str], inner: Mapping[str, str]) -> bool:
    """Whether ``outer`` has every pair of ``inner`` and more (both matching one car)."""
    return len(outer) > len(inner) and inner.keys() <= outer.keys()


def choose_pool(attributes: Mapping[str, str], pools: Iterable[FleetPoolSpec]) -> PoolChoice:
    """The pool a car with these certificate attributes joins (see the module's rule).

    Args:
        attributes: The car's certificate attributes.
        pools: The FleetPools (in any order: the answer does not depend on it).

    Returns:
        The chosen pool, or none with the contenders when the car is refused.
    """
    matching = [p for p in pools if p.matches(attributes)]
    if not matching:
        return PoolChoice(None)
    best = max(matching, key=lambda p: len(p.match_attributes))
    sel = best.match_attributes
    if all(q is best or _strictly_contains(sel, q.match_attributes) for q in matching):
        return PoolChoice(best)
    top = [
        p.name
        for p in matching
        if not any(_strictly_contains(q.match_attributes, p.match_attributes) for q in matching)
    ]
    return PoolChoice(None, tuple(sorted(top)))


@dataclass
class PoolOverlap:
    """How one pool's selector meets the other pools' (what :func:`choose_pool` makes of it).

    Attributes:
        ambiguous_with: Pools that tie with this one for some cars: those cars are refused.
        refused: The smallest sets of attributes of such refused cars (at most a few).
        shadowed_by: More specific pools that take (or, tied among themselves, refuse)
            cars this pool's selector also matches.
        shadows: Less specific pools whose selectors also match cars this pool takes.
    """

    ambiguous_with: set[str] = field(default_factory=set)
    refused: list[dict[str, str]] = field(default_factory=list)
    shadowed_by: set[str] = field(default_factory=set)
    shadows: set[str] = field(default_factory=set)

    @property
    def overlaps(self) -> bool:
        """Whether another pool's selector matches any car this one does."""
        return bool(self.ambiguous_with or self.shadowed_by or self.shadows)


# Enough examples for a condition's message to show what is refused; the pools are named.
_MAX_REFUSED_EXAMPLES = 3


def _compatible(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether one car can match both selectors (they agree on every common key)."""
    return all(b[k] == v for k, v in a.items() if k in b)


def pool_overlaps(pools: Sequence[FleetPoolSpec]) -> dict[str, PoolOverlap]:
    """Every pool's overlaps with the others, from the FleetPools alone (no car needed).

    Where several selectors match one car, its outcome depends only on which pools match,
    and the union of their selectors is the smallest car they all match. Every refused car
    matches the union of two selectors that is refused too, so asking :func:`choose_pool`
    about the union of each pair of compatible selectors finds every tie and every shadow.

    Args:
        pools: The FleetPools (names unique).

    Returns:
        Per pool name, its overlaps (empty for a pool that overlaps no other).
    """
    ordered = sorted(pools, key=lambda p: p.name)
    out = {p.name: PoolOverlap() for p in ordered}
    seen: set[frozenset[tuple[str, str]]] = set()
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if not _compatible(a.match_attributes, b.match_attributes):
                continue
            union = {**a.match_attributes, **b.match_attributes}
            key = frozenset(union.items())
            if key in seen:
                continue
            seen.add(key)
            matching = [p for p in ordered if p.matches(union)]
            choice = choose_pool(union, matching)
            if choice.pool is not None:
                for p in matching:
                    if p is not choice.pool:
                        out[p.name].shadowed_by.add(choice.pool.name)
                        out[choice.pool.name].shadows.add(p.name)
                continue
            contenders = [p for p in matching if p.name in choice.contenders]
            for p in matching:
                entry = out[p.name]
                if p.name in choice.contenders:
                    entry.ambiguous_with.update(n for n in choice.contenders if n != p.name)
                    if len(entry.refused) < _MAX_REFUSED_EXAMPLES:
                        entry.refused.append(dict(sorted(union.items())))
                else:
                    entry.shadowed_by.update(
                        c.name
                        for c in contenders
                        if _strictly_contains(c.match_attributes, p.match_attributes)
                    )
    return out
