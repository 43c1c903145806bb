"""Placement that knows when a car will leave: the estimate of a task's run time (its
job's measured items/s) and the check on broken departure claims. The placement keys
themselves: ``test_gateway_placement.py``."""

from __future__ import annotations

import math

import pytest

from parkfleet.gateway.departures import (
    EARLY_SLACK_S,
    DepartureClaims,
    broke_claim,
)
from parkfleet.gateway.estimate import DECAY, JobRates, job_key
from parkfleet.taskport import ModelRef, TaskSpec


def spec(job: str = "", sha: str = "0" * 64, batch: int = 8) -> TaskSpec:
    return TaskSpec(
        task_id="t",
        cell="c",
        runtime="onnxruntime",
        model=ModelRef(sha256=sha, size_bytes=1),
        input_name="x",
        output_names=("y",),
        batch_size=batch,
        item_start=0,
        item_end=100,
        inputs=None,  # type: ignore[arg-type]
        sink=None,  # type: ignore[arg-type]
        job=job,
    )


def test_the_rate_is_keyed_by_job_else_by_model_and_batch() -> None:
    assert job_key(spec("uid-1")) == "job:uid-1"
    assert job_key(spec()) != job_key(spec(batch=16))
    assert job_key(spec()) == job_key(spec())


def test_estimate_is_unknown_before_a_measurement_then_items_over_the_rate() -> None:
    rates = JobRates()
    assert rates.rate("j") is None
    assert rates.remaining_s("j", 100) is None
    rates.record("j", 0, 30.0)  # an attempt that delivered nothing says nothing
    rates.record("j", 10, 0.0)
    assert rates.rate("j") is None
    rates.record("j", 100, 50.0)
    assert rates.rate("j") == pytest.approx(2.0)
    assert rates.remaining_s("j", 300) == pytest.approx(150.0)
    # A newer attempt weighs more than an older one: a running mean that forgets.
    rates.record("j", 400, 100.0)
    assert rates.rate("j") == pytest.approx((100 * DECAY + 400) / (50 * DECAY + 100))


def test_jobs_remembered_are_bounded() -> None:
    rates = JobRates(max_jobs=2)
    for job in ("a", "b", "c"):
        rates.record(job, 10, 1.0)
    assert rates.rate("a") is None
    assert rates.rate("c") == pytest.approx(10.0)


def test_a_claim_is_broken_only_well_before_the_departure() -> None:
    # Claimed at t=0 to stay 3600 s: leaving in the last half, or within the slack, is fine.
    assert not broke_claim(3600.0, 3600.0, 1900.0)
    assert broke_claim(3600.0, 3600.0, 1700.0)
    # A short claim: the slack in seconds decides.
    assert not broke_claim(200.0, 200.0, 200.0 - EARLY_SLACK_S + 1)
    assert broke_claim(200.0, 200.0, 200.0 - EARLY_SLACK_S - 1)
    assert not broke_claim(0.0, 0.0, 0.0)  # no claim, nothing to break


def test_a_broken_claim_disregards_the_cars_claims_for_a_while() -> None:
    book = DepartureClaims(disregard_s=100.0)
    assert book.stay_s("car", 0.0, 10.0) is None  # no claim
    assert book.stay_s("car", 50.0, 10.0) == 40.0
    assert book.stay_s("car", 5.0, 10.0) == 0.0  # past its departure: leaving any moment
    book.broken("car", 10.0)
    assert book.disregarded("car", 50.0)
    assert book.stay_s("car", 500.0, 50.0) is None
    assert book.stay_s("other", 500.0, 50.0) == 450.0
    assert not book.disregarded("car", 111.0)
    assert book.stay_s("car", 500.0, 111.0) == 389.0


def test_the_disregarded_cars_are_bounded() -> None:
    book = DepartureClaims(max_cars=2)
    for car in ("a", "b", "c"):
        book.broken(car, 0.0)
    assert not book.disregarded("a", 1.0)
    assert book.disregarded("c", 1.0)
    assert math.isfinite(book.disregard_s)
