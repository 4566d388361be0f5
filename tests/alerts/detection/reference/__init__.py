"""The detection engine as it was before issue 12's batch rewrite: rank by rank, kept as the reference
the vectorised engine must equal (``tests/alerts/detection/test_batch_equivalence.py``).

A frozen copy (commit 84609b7's parent): only the imports point here. Do not change it with the live
engine; a deliberate change of detection behaviour updates the equivalence test instead.
"""
