"""The dedup pipeline: import the pool and the evaluation set, embed both, remove the pool's
near-duplicates of the evaluation set (calibrating the threshold first).

    import train (the pool) + import test -> embed each -> dedup (calibrate) -> deduped pool

Defaults are the stage configs' (semisup_core.embed.EmbedConfig, semisup_core.dedup.DedupConfig);
``semisup run dedup --config configs/dedup_demo.yaml`` runs it under kfp.local. Recompile after
any change: ``.venv/bin/semisup pipelines compile``.
"""

import os

from kfp import dsl
from kfp.dsl import pipeline_context

from components.data.component import import_data
from components.dedup.component import dedup as dedup_step
from components.embed.component import embed
from pipelines import compile_main, on_platform, with_resource_docs
from pipelines.resources import DEFAULT as _R, PROFILES
from semisup_core import storage
from semisup_core.dedup.stage import DedupConfig, DedupRunConfig
from semisup_core.embed import EmbedConfig

NAME = "dedup"
PIPELINE = "dedup_pipeline"
CONFIG = DedupRunConfig
_E, _DD = EmbedConfig(dataset="-", out="-"), DedupConfig(pool="-", eval_sets=["-"], out="-")


@dsl.pipeline(name=NAME, description="Near-duplicates of an evaluation set removed from an "
              "unlabelled pool (Yalniz et al. supplement §5), with a calibrated threshold")
@with_resource_docs
def dedup_pipeline(
        data_root: str = DedupRunConfig().out + "/data",
        fashion_mnist: str = DedupRunConfig().fashion_mnist,
        embedder: str = _E.model,
        threshold: float = -1.0,
        calibrate: bool = True,
        calibration_images: int = _DD.calibration_images,
        target_fpr: float = _DD.target_fpr,
        index: str = _DD.index,
        seed: int = _DD.seed,
        verifier: str = _DD.verifier or "",
        verify_candidates: int = _DD.verify_candidates,
        known_duplicates: list = [],
        infer_cpu: str = _R.infer.cpu,
        infer_memory: str = _R.infer.memory,
        infer_gpus: int = _R.infer.gpus,
        light_cpu: str = _R.light.cpu,
        light_memory: str = _R.light.memory,
        accelerator: str = _R.accelerator,
        gpu_node_selector: dict = _R.gpu_node_selector,
        gpu_tolerations: list = _R.gpu_tolerations):
    """Embed the pool and the test set, find and remove the near-duplicates.

    Args:
        data_root: directory URI for the imported datasets.
        fashion_mnist: Fashion-MNIST IDX directory (train = the pool, test = the evaluation set).
        embedder: pixels, efficientnet_lite0 or a model directory URI.
        threshold: cosine similarity of a near-duplicate; negative with calibrate: the calibrated one.
        calibrate: measure recall per transform and the false-flag rate first.
        calibration_images: evaluation images copied by the calibration.
        target_fpr: the largest share of distinct images the calibrated threshold flags.
        index: auto, flat, ivf_flat or ivf_pq.
        seed: seed of the calibration draw.
        verifier: a trained pair_verifier's model directory URI ("": none; docs/dedup.md): each
            pool image's nearest test images are verified pair by pair, the threshold is then
            its logit margin (negative with calibrate: the calibrated one).
        verify_candidates: with a verifier, nearest test images verified per pool image.
        known_duplicates: calibration: pairs [key, key] of test images judged to be the same
            image (calibration_flags.png shows the candidates); not counted as false flags.
    """
    pool = import_data(source="fashion-mnist", src=fashion_mnist, root=data_root,
                       name="fmnist-train", split="train").set_display_name("import pool")
    test = import_data(source="fashion-mnist", src=fashion_mnist, root=data_root,
                       name="fmnist-test", split="test").set_display_name("import test set")
    emb_pool = embed(dataset=pool.outputs["dataset"], model=embedder).set_display_name("embed pool")
    emb_test = embed(dataset=test.outputs["dataset"], model=embedder).set_display_name("embed test set")
    dedup_step(pool=pool.outputs["dataset"], pool_embeddings=emb_pool.outputs["embeddings"],
               eval_embeddings=emb_test.outputs["embeddings"], threshold=threshold,
               calibrate=calibrate, calibration_images=calibration_images, target_fpr=target_fpr,
               index=index, seed=seed, verifier=verifier,
               verify_candidates=verify_candidates,
               known_duplicates=known_duplicates).set_display_name("dedup")
    on_platform(pipeline_context.Pipeline.get_default_pipeline().tasks.values(), locals())


def arguments(cfg: DedupRunConfig, out: str, local: bool = True, profile: str = "cpu") -> dict:
    src = os.path.abspath(cfg.fashion_mnist) if local and storage.is_local(cfg.fashion_mnist) \
        else cfg.fashion_mnist
    return dict(data_root=storage.join(out, "data"), fashion_mnist=src, embedder=cfg.embedder,
                threshold=cfg.threshold, calibrate=cfg.calibrate,
                calibration_images=cfg.calibration_images, seed=cfg.seed,
                verifier=cfg.verifier or "", verify_candidates=cfg.verify_candidates,
                known_duplicates=[list(p) for p in cfg.known_duplicates],
                **PROFILES[profile].parameters(("infer", "light")))


def finish(cfg: DedupRunConfig, out: str, run_dir: str, artifacts: list[str], seconds: float) -> dict:
    """After a local run: copy the dedup result next to the run and print its summary."""
    from semisup.local_run import copy_tree
    from semisup_core.report import dedup_summary
    found = [a for a in artifacts if os.path.basename(a) == "result"]
    if not found:
        raise RuntimeError(f"no dedup result under {run_dir}: did the pipeline finish?")
    dest = os.path.join(out, f"seed-{cfg.seed}", "dedup")
    copy_tree(found[0], dest)
    summary = storage.read_json(os.path.join(dest, "summary.json"))
    print("\n" + dedup_summary(summary))
    cal = os.path.join(dest, "calibration.json")
    if os.path.exists(cal):
        c = storage.read_json(cal)
        print(f"Calibration ({c['images']} test images copied): threshold {c['threshold']:.4f}, "
              f"false-flag rate {c['false_flag_rate']:.4f}; recall " +
              ", ".join(f"{t} {r:.3f}" for t, r in c["recall"].items()))
    print(f"\nFinished in {seconds / 60:.1f} min. Result: {dest} (pairs.parquet, removed.parquet, "
          "manifest.parquet, contact_sheet.png, calibration.json, summary.json)")
    return summary


if __name__ == "__main__":
    compile_main(dedup_pipeline, __file__)
