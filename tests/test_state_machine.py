"""The cache as a state machine: 200 random sequences of 20 steps (market corrections, appended and
removed candles, flat runs, renders with random filters, preset and gap-policy switches, verify,
repair, file damage, index-row deletion), invariants checked after every step. See tests/state_walk.py;
`make soak` runs 10,000 sequences."""

from __future__ import annotations

import pytest

from state_walk import run_many

BLOCKS, PER_BLOCK, STEPS = 8, 25, 20


@pytest.mark.parametrize("block", range(BLOCKS))
def test_random_sequences_keep_every_invariant(block: int):
    count, violations = run_many(first_seed=block * PER_BLOCK, count=PER_BLOCK, steps=STEPS)
    assert count == PER_BLOCK
    assert not violations, violations[0]
