"""KFP components: one per stage, each a typed interface over one semisup_core function.

``components/<stage>/component.py`` holds the ``@dsl.component`` signatures (what the KFP UI
shows); ``components/<stage>/runner.py`` turns those parameters into the stage's typed config,
calls semisup_core and writes the KFP outputs. Runners never import kfp, so they are unit
tested like any library code; components are smoke-tested under ``kfp.local``.
"""

from semisup_core import __version__

#: where the stage images are pushed (images/<stage>/Dockerfile, built by `make images`)
IMAGE_REPO = "ghcr.io/semisup"


def image(stage: str) -> str:
    """The container image of ``stage`` at this package's version."""
    return f"{IMAGE_REPO}/semisup-{stage}:{__version__}"
