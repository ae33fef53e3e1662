"""The built-in world: a small Stable-Diffusion-architecture model trained on PoseScenes (``posescene bootstrap``).

Nothing can be downloaded, so the project brings its own world (``models/world/``): a VAE, a text-conditioned
U-Net (frozen MiniLM text states, as SD's CLIP is frozen), the *primary* T2I-Adapter on docs/method.md step-2
lattice maps, and two judges (scene classifier, keypoint estimator) so the evaluation can measure scene
agreement and pose fidelity without CLIP/OpenPose weights.

- :mod:`~posescene.world.architectures`: the parts' configs, the text encoder, pipeline-directory assembly;
- :mod:`~posescene.world.data`: PoseScenes scenes in memory (:class:`~posescene.world.data.WorldData`), scene ranges;
- :mod:`~posescene.world.loop`: the training loop every stage shares (per-step random streams, EMA, checkpoints);
- :mod:`~posescene.world.train`: the stages' trainers (vae, decoder, judges, unet, adapter, joint);
- :mod:`~posescene.world.parts`: the shipped parts (save, load) and their training record;
- :mod:`~posescene.world.measure`: held-out quality and the pose's pull, images drawn by the one sampler;
- :mod:`~posescene.world.report`: the targets and the world's README;
- :mod:`~posescene.world.bootstrap`: the stage, ``bootstrap(params)``, which runs them in order;
- :mod:`~posescene.world.pipeline`: the ``world`` stage, ``world(params)``: the shipped parts as a pipeline directory.
"""
