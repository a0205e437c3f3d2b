"""CJ Assessment Service: comparative judgement of essays (pairing, scoring, rounds)."""
