"""KFP component that makes a store URI (a pipeline parameter) an artifact another step takes."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from components import image


@dsl.component(base_image=image("data"), install_kfp_package=False)
def reference(uri: str, artifact: Output[Artifact]):
    """A reference to ``uri`` as an artifact ('' = none): how a run parameter such as
    teacher_student's teacher_init or candidates reaches an optional artifact input. KFP's
    importer refuses an empty URI, so '' could not mean none there; the consumers (train's
    init_from, select's candidates) read a reference to '' as no input.

    Args:
        uri: a model directory, dataset or table URI (s3://, minio:// or a path); '' = none.

    Returns:
        artifact: dataset-ref.json naming uri (components/artifacts.py), no copy of the data.
    """
    from components.reference.runner import run
    run(uri=uri, artifact=artifact)
