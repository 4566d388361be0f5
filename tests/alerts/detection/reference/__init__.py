"""The detection engine as it was before issue 12's batch rewrite: rank by rank, kept as the reference
the vectorised engine must equal (``tests/alerts/detection/test_batch_equivalence.py``).

A frozen copy (commit 84609b7's parent): only the imports point here. Do not change it with the live
engine's *implementation* (batching, scans, fast paths). A deliberate change of detection *behaviour*
is written here too, in this engine's own rank-by-rank way and not copied (the "mirrors ..." comments:
the recovery evidence, the "I'm OK" bit and its ``[ok_key]`` mark, the walking evidence read reading by
reading in ``wristband._walked``), so the equivalence tests keep comparing two implementations.
"""
