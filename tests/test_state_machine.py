"""The cache as a state machine: 125 random sequences of 20 steps (market corrections, appended and
removed candles, flat runs, renders with random filters, preset and gap-policy switches, verify,
repair, file damage, index-row deletion, a second index on the root, a lost index, links, folders and
FIFOs planted at image paths, links at the lock and the marker), invariants checked after every step;
a few more sequences also stop real render processes with SIGINT, SIGTERM and SIGHUP at random moments.
See tests/state_walk.py; `make soak` runs 10,000 sequences."""

from __future__ import annotations

import pytest

from state_walk import run_many

pytestmark = pytest.mark.slow  # its subject is the process boundary (make test-fast skips it)

BLOCKS, PER_BLOCK, STEPS = 5, 25, 20  # sized to make test's CPU budget; make soak runs 10,000


@pytest.mark.parametrize("block", range(BLOCKS))
def test_random_sequences_keep_every_invariant(block: int):
    count, violations = run_many(first_seed=block * PER_BLOCK, count=PER_BLOCK, steps=STEPS)
    assert count == PER_BLOCK
    assert not violations, violations[0]


@pytest.mark.parametrize("block", range(2))
def test_random_sequences_with_signals_keep_every_invariant(block: int):
    count, violations = run_many(first_seed=10_000 + block * 4, count=4, steps=STEPS, signals=True)
    assert count == 4
    assert not violations, violations[0]
