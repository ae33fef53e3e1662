"""Drawing images: the conditioning poses (``pose``), their maps (``maps``) and the one sampler (``sampler``)."""
