"""SimCLRv2 (Chen et al. 2020; docs/simclr.md): contrastive pre-training on the pool, fine-tuning
on the labels from the projection head's middle, distillation into a student on the pool.

The training itself is the one loop's (``objective: contrastive`` with ``views: simclr`` and
``proj_layers: 3``, LARS; ``objective: distill``); here: ``stage`` (``semisup stage
contrastive|distill``), ``probe`` (linear evaluation per pre-training epoch), ``analysis`` (the
oracle's view of the teacher's labels on the pool), ``report``, ``run`` (the method end to end
in-process). Import-free, like every method package.
"""
