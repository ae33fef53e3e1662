"""The evaluation, one package: the stage (``evaluate``), held-out sets (``heldout``), the judges (``judges``: the
world's own and the detectors, behind one interface), the pure measures (``metrics``), the frontier statistics
(``frontier``), the promotion gate (``promotion``), the outputs (``report``) and re-deciding a finished run
(``restat``)."""
