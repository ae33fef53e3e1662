"""Training the secondary adapter S-Ad: the stage (``train``), the two-adapter objective as pure functions
(``objective``) and resumable checkpoints (``checkpoints``)."""
