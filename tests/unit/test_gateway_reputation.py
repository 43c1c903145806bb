"""The cars' reputation: the quarantine and trust rule, and its bounded memory."""

from __future__ import annotations

from parkfleet.gateway.reputation import Reputation, ReputationRule


def test_a_car_starts_new_and_a_liar_is_quarantined_after_two_strikes() -> None:
    book = Reputation()
    assert book.state("liar") == "new"
    assert book.record("liar", False) == ("new", "new")
    assert book.record("liar", False) == ("new", "quarantined")
    assert book.counts("liar") == (0, 2)


def test_quarantine_sticks_whatever_comes_after() -> None:
    book = Reputation()
    book.record("liar", False)
    book.record("liar", False)
    for _ in range(100):
        assert book.record("liar", True)[1] == "quarantined"


def test_a_long_clean_record_is_trusted_and_survives_an_odd_disagreement() -> None:
    rule = ReputationRule(quarantine_strikes=2, quarantine_ratio=0.1, trusted_after=10)
    book = Reputation(rule)
    for _ in range(9):
        book.record("honest", True)
    assert book.state("honest") == "new"
    assert book.record("honest", True) == ("new", "trusted")
    for _ in range(30):
        book.record("honest", True)
    # Two strikes among 42 verdicts (under 10 %): not quarantined, but trusted only
    # again after trusted_after agreements per strike.
    assert book.record("honest", False)[1] == "trusted"  # 40 >= 10 * 2
    assert book.record("honest", False)[1] == "trusted"  # 40 >= 10 * 3
    assert rule.state(40, 2) == "trusted"
    assert rule.state(29, 2) == "new"
    assert rule.state(15, 2) == "quarantined"  # 2 of 17 is over 10 %


def test_the_rule_is_configurable() -> None:
    strict = ReputationRule(quarantine_strikes=1, quarantine_ratio=0.0)
    assert strict.state(1000, 1) == "quarantined"
    lenient = ReputationRule(quarantine_strikes=5, quarantine_ratio=0.5)
    assert lenient.state(0, 4) == "new"
    assert lenient.state(5, 5) == "quarantined"
    assert lenient.state(6, 5) == "new"


def test_memory_is_bounded_least_recently_judged_forgotten_first() -> None:
    book = Reputation(max_cars=3)
    for car in ("a", "b", "c"):
        book.record(car, False)
    book.record("a", False)  # a is quarantined, and the most recently judged
    book.record("d", True)  # b goes
    assert len(book) == 3
    assert book.counts("b") == (0, 0)
    assert book.state("a") == "quarantined"
    assert book.counts("c") == (0, 1)
