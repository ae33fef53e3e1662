"""The data stages, in pipeline order: the built-in PoseScenes world's images (``synth``), captions + images into a
validated manifest (``ingest``), pose lattices (``poses``, with the pose models of ``detectors``), the training
five-tuples (``pairs``), lattice maps (``render``) and the frozen encoders' latents and text states (``cache``)."""
