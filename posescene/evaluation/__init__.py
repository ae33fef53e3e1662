"""The evaluation, split by concern: held-out sets (``heldout``), judges, the frontier statistics (``frontier``),
the promotion gate (``promotion``) and the outputs (``report``); the stage itself is :mod:`posescene.evaluate`."""
