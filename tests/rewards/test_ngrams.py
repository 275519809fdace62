"""tfcap.rewards.ngrams: the hash index agrees with the sorted-table search."""

import numpy as np
import pytest

from tfcap.rewards.ngrams import HashIndex, lookup


@pytest.mark.parametrize("size", [0, 1, 7, 5000])
def test_hash_index_finds_what_binary_search_finds(size):
    rng = np.random.default_rng(size)
    table = np.unique(rng.integers(1, 2**63, size, dtype=np.uint64))
    present = table[rng.integers(0, max(len(table), 1), 3000)] if size else table
    zero = np.zeros(1, np.uint64)
    queries = np.concatenate([present, rng.integers(1, 2**63, 3000, dtype=np.uint64), zero])
    want_pos, want_found = lookup(table, queries)
    pos, found = HashIndex(table).find(queries)
    np.testing.assert_array_equal(found, want_found)
    np.testing.assert_array_equal(pos[found], want_pos[want_found])
    assert found[: len(present)].all()


@pytest.mark.parametrize("probes", [0, 1, 2])
def test_hash_index_fallback_after_few_probe_rounds(probes):
    """Codes still unresolved after the vectorized rounds go to the binary search."""
    rng = np.random.default_rng(probes)
    table = np.unique(rng.integers(1, 2**63, 4000, dtype=np.uint64))
    index = HashIndex(table)
    index._PROBES = probes
    queries = np.concatenate([table, table + np.uint64(1)])
    pos, found = index.find(queries)
    assert found[: len(table)].all() and not found[len(table) :].any()
    np.testing.assert_array_equal(table[pos[: len(table)]], table)
