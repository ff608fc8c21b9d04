"""The copy_verifier pipeline: train dedup's copy verifier on the pool and dedup with it.

    import train (the pool) + import test -> embed each by the copy descriptor ->
    verify_pairs (pool pairs: copies and look-alikes) -> train (pair_verifier) ->
    dedup (the descriptor's 5 nearest test images of each pool image, verified; calibrated)

Defaults are the stage configs' (semisup_core.dedup.verifier: CopyVerifierRunConfig,
VerifyPairsConfig, verifier_recipe()); ``semisup run copy_verifier --config
configs/copy_verifier_demo.yaml`` runs it under kfp.local (docs/dedup.md "The copy verifier").
Recompile after any change: ``.venv/bin/semisup pipelines compile``.
"""

import os

from kfp import dsl
from kfp.dsl import pipeline_context

from components.data.component import import_data
from components.dedup.component import dedup as dedup_step, verify_pairs
from components.embed.component import embed
from components.train.component import train
from pipelines import compile_main, on_platform, with_resource_docs
from pipelines.resources import DEFAULT as _R, PROFILES
from semisup_core import storage
from semisup_core.dedup.stage import DedupConfig
from semisup_core.dedup.verifier import CopyVerifierRunConfig
from semisup_core.train.config import LauncherSpec

NAME = "copy-verifier"
PIPELINE = "copy_verifier"
CONFIG = CopyVerifierRunConfig
_C, _DD = CopyVerifierRunConfig(), DedupConfig(pool="-", eval_sets=["-"], out="-")


@dsl.pipeline(name=NAME, description="dedup's copy verifier trained on the pool (copies and "
              "look-alike pairs), then the pool deduplicated against the test set with it")
@with_resource_docs
def copy_verifier(
        data_root: str = _C.out + "/data",
        fashion_mnist: str = _C.fashion_mnist,
        descriptor: str = _C.descriptor,
        pairs_images: int = _C.pairs_images,
        pairs_per_image: int = _C.pairs_per_image,
        neighbours: int = _C.neighbours,
        recipe: dict = _C.recipe.model_dump(mode="json", exclude_none=True),
        seed: int = _C.seed,
        verify_candidates: int = _C.verify_candidates,
        calibration_images: int = _C.calibration_images,
        target_fpr: float = _DD.target_fpr,
        known_duplicates: list = [],
        workdir: str = "",
        launcher: dict = LauncherSpec().model_dump(mode="json"),
        train_cpu: str = _R.train.cpu,
        train_memory: str = _R.train.memory,
        train_gpus: int = _R.train.gpus,
        infer_cpu: str = _R.infer.cpu,
        infer_memory: str = _R.infer.memory,
        infer_gpus: int = _R.infer.gpus,
        light_cpu: str = _R.light.cpu,
        light_memory: str = _R.light.memory,
        accelerator: str = _R.accelerator,
        gpu_node_selector: dict = _R.gpu_node_selector,
        gpu_tolerations: list = _R.gpu_tolerations):
    """Train the copy verifier on the pool and dedup the pool against the test set with it.

    Args:
        data_root: directory URI for the imported datasets.
        fashion_mnist: Fashion-MNIST IDX directory (train = the pool, test = the evaluation set).
        descriptor: embed's model that proposes the candidates: a copy descriptor's model
            directory URI (configs/copy_descriptor.yaml) or pixels.
        pairs_images: pool images the verifier's pairs are drawn from.
        pairs_per_image: positive pairs per image, and as many negatives.
        neighbours: a negative pairs an image with an edit of one of its this many nearest others.
        recipe: the verifier's training recipe (model pair_verifier; semisup_core.dedup.verifier.verifier_recipe).
        seed: seed of the pairs, the verifier's training and the calibration draw.
        verify_candidates: nearest test images verified per pool image.
        calibration_images: test images copied by the calibration.
        target_fpr: the largest share of distinct images the calibrated threshold flags.
        known_duplicates: calibration: pairs [key, key] of test images judged to be the same
            image (calibration_flags.png shows the candidates); not counted as false flags.
        workdir: store URI for the verifier's training checkpoints so a restarted step resumes ('' = none).
        launcher: where the verifier trains (LauncherSpec): pod, pytorchjob or torchrun.
    """
    pool = import_data(source="fashion-mnist", src=fashion_mnist, root=data_root,
                       name="fmnist-train", split="train").set_display_name("import pool")
    test = import_data(source="fashion-mnist", src=fashion_mnist, root=data_root,
                       name="fmnist-test", split="test").set_display_name("import test set")
    emb_pool = embed(dataset=pool.outputs["dataset"], model=descriptor).set_display_name("embed pool")
    emb_test = embed(dataset=test.outputs["dataset"], model=descriptor).set_display_name("embed test set")
    pairs = verify_pairs(pool=pool.outputs["dataset"], pool_embeddings=emb_pool.outputs["embeddings"],
                         images=pairs_images, pairs_per_image=pairs_per_image,
                         neighbours=neighbours, seed=seed).set_display_name("verifier pairs")
    model = train(data=pairs.outputs["pairs"], recipe=recipe, seed=seed, checkpoints=workdir,
                  launcher=launcher).set_display_name("train verifier")
    dedup_step(pool=pool.outputs["dataset"], pool_embeddings=emb_pool.outputs["embeddings"],
               eval_embeddings=emb_test.outputs["embeddings"], threshold=-1.0, calibrate=True,
               calibration_images=calibration_images, target_fpr=target_fpr, seed=seed,
               verify_candidates=verify_candidates, known_duplicates=known_duplicates,
               verifier_model=model.outputs["model"]).set_display_name("dedup (verified)")
    on_platform(pipeline_context.Pipeline.get_default_pipeline().tasks.values(), locals())


def arguments(cfg: CopyVerifierRunConfig, out: str, local: bool = True,
              profile: str = "cpu") -> dict:
    src = os.path.abspath(cfg.fashion_mnist) if local and storage.is_local(cfg.fashion_mnist) \
        else cfg.fashion_mnist
    descriptor = cfg.descriptor
    if local and descriptor != "pixels" and storage.is_local(descriptor):
        descriptor = os.path.abspath(descriptor)
    return dict(data_root=storage.join(out, "data"), fashion_mnist=src, descriptor=descriptor,
                pairs_images=cfg.pairs_images, pairs_per_image=cfg.pairs_per_image,
                neighbours=cfg.neighbours,
                recipe=cfg.recipe.model_dump(mode="json", exclude_none=True), seed=cfg.seed,
                verify_candidates=cfg.verify_candidates,
                calibration_images=cfg.calibration_images,
                known_duplicates=[list(p) for p in cfg.known_duplicates],
                **PROFILES[profile].parameters(("train", "infer", "light")))


def finish(cfg: CopyVerifierRunConfig, out: str, run_dir: str, artifacts: list[str],
           seconds: float) -> dict:
    """After a local run: the dedup result and the verifier next to the run, and the summary."""
    from pipelines.dedup import finish as dedup_finish
    from semisup.local_run import copy_tree
    model = [a for a in artifacts if os.path.basename(a) == "model"]
    if model:
        copy_tree(model[0], os.path.join(out, f"seed-{cfg.seed}", "verifier"))
    return dedup_finish(cfg, out, run_dir, artifacts, seconds)


if __name__ == "__main__":
    compile_main(copy_verifier, __file__)
