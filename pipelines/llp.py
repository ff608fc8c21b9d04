"""Local Label Propagation (Zhuang et al. 2019) as a KFP pipeline.

data (the demo's split) -> dedup (embed test set and pool, remove the pool's near-duplicates of
the test set) -> supervised baseline on the labels + LLP on labels and pool -> LLP's network
fine-tuned on the labels -> evaluate all three -> report (the comparison table every method
shows, LLP's pseudo-label precision and coverage per propagation round from the oracle).

Defaults are the LLP stage's own (semisup_core.llp.run.LLPRunConfig: its recipe, the paper's
K, T, tau) and dedup's (DedupSpec). ``semisup run llp --config configs/llp_demo.yaml`` runs it
under kfp.local. Recompile after any change: ``.venv/bin/semisup pipelines compile``.
"""

from kfp import dsl
from kfp.dsl import pipeline_context

from components.evaluate.component import evaluate
from components.llp.component import llp as llp_step
from components.llp_report.component import llp_report
from components.train.component import train
from pipelines import compile_main, on_platform, with_resource_docs
from pipelines.common import demo_arguments, demo_data, finish_report
from pipelines.resources import DEFAULT as _R, PROFILES
from semisup_core.dedup.stage import DedupSpec
from semisup_core.llp.run import LLPRunConfig
from semisup_core.train.config import LauncherSpec

NAME = "llp"
PIPELINE = "llp"
CONFIG = LLPRunConfig
_L, _DD = LLPRunConfig(), DedupSpec()


@dsl.pipeline(name=NAME, description="Local Label Propagation (Zhuang et al. 2019): a memory "
              "bank, density-weighted kNN pseudo-labels, aggregation and confidence-weighted "
              "losses, against the supervised baseline")
@with_resource_docs
def llp(data_root: str = _L.out + "/data",
        workdir: str = "",
        fashion_mnist: str = _L.fashion_mnist,
        mnist: str = _L.mnist,
        labels_per_class: int = _L.labels_per_class,
        split_order: str = _L.split_order,
        seed: int = _L.seed,
        baseline: dict = _L.baseline.model_dump(mode="json", exclude_none=True),
        recipe: dict = _L.llp.model_dump(mode="json", exclude_none=True),
        finetune: dict = _L.finetune.model_dump(mode="json", exclude_none=True),
        dedup: bool = _DD.enabled,
        dedup_embedder: str = _DD.embedder,
        dedup_threshold: float = _DD.threshold,
        dedup_verifier: str = _DD.verifier or "",
        warm_start: str = _L.warm_start,
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
    """LLP and the supervised baseline on one split, compared.

    Args:
        data_root: directory URI for imported datasets and splits, shared by runs (s3://, minio:// or a path).
        workdir: store URI for training checkpoints so restarted steps resume ('' = none).
        fashion_mnist: Fashion-MNIST IDX directory: the labelled task.
        mnist: MNIST IDX directory, mixed into the pool as distractors ('' = no distractors).
        labels_per_class: labelled images per class; the rest of the training set joins the pool.
        split_order: permutation (every recorded result) or hash (streaming; the split pipeline
            writes it as parallel tasks into the same data_root, where this run reuses it).
        seed: seed of the labelled draw and of both models.
        baseline: the supervised baseline's recipe (labels only).
        recipe: LLP's training recipe (objective llp; its llp section: embed_dim, temperature, bank_momentum, k, density_k, density, pseudo_labels, confidence, category_weight, warm_epochs, softmax_support).
        finetune: LLP's network fine-tuned on the labels afterwards (the teacher/student's fine-tuning; not in the LLP paper); enabled=false passes LLP's model through.
        dedup: remove the pool's near-duplicates of the test set before LLP trains on it.
        dedup_embedder: embed model for dedup: pixels, efficientnet_lite0 or a model directory URI.
        dedup_threshold: cosine similarity at and above which a pool image duplicates a test image
            (with a verifier: its logit margin).
        dedup_verifier: a trained pair_verifier's model directory URI ("": none; docs/dedup.md):
            each pool image's 5 nearest test images are verified pair by pair.
        warm_start: baseline (LLP starts from the supervised baseline's weights) or none (from scratch).
        launcher: where both training tasks train (LauncherSpec): pod, pytorchjob (LLP's pods run images/llp) or torchrun.
    """
    data, dd = demo_data(data_root, fashion_mnist, mnist, labels_per_class, seed, dedup,
                         dedup_embedder, dedup_threshold, split_order, dedup_verifier)
    base = train(data=data["labelled"], recipe=baseline, seed=seed, checkpoints=workdir,
                 launcher=launcher).set_display_name("train supervised baseline")
    base_eval = evaluate(model=base.outputs["model"], data=data["test"],
                         name="supervised baseline").set_display_name("evaluate baseline")
    model = llp_step(labelled=data["labelled"], pool=data["pool"], recipe=recipe, seed=seed,
                     checkpoints=workdir, launcher=launcher, baseline=base.outputs["model"],
                     warm_start=warm_start).set_display_name("train LLP")
    llp_eval = evaluate(model=model.outputs["model"], data=data["test"],
                        name="LLP").set_display_name("evaluate LLP")
    tuned = train(data=data["labelled"], recipe=finetune, seed=seed,
                  init_from=model.outputs["model"], checkpoints=workdir,
                  launcher=launcher).set_display_name("fine-tune LLP on the labels")
    tuned_eval = evaluate(model=tuned.outputs["model"], data=data["test"],
                          name="LLP, fine-tuned on the labels").set_display_name(
                              "evaluate fine-tuned LLP")
    llp_report(baseline=base_eval.outputs["metrics"], llp=llp_eval.outputs["metrics"],
               finetuned=tuned_eval.outputs["metrics"], model=model.outputs["model"],
               test=data["test"], oracle=data["oracle"],
               dedup=dd.outputs["result"]).set_display_name("report")
    on_platform(pipeline_context.Pipeline.get_default_pipeline().tasks.values(), locals())


def arguments(cfg: LLPRunConfig, out: str, local: bool = True, profile: str = "cpu") -> dict:
    """Pipeline arguments from a validated LLPRunConfig (``common.demo_arguments``)."""
    return dict(demo_arguments(cfg, out, local),
                baseline=cfg.baseline.model_dump(mode="json", exclude_none=True),
                recipe=cfg.llp.model_dump(mode="json", exclude_none=True),
                finetune=cfg.finetune.model_dump(mode="json", exclude_none=True),
                warm_start=cfg.warm_start, **PROFILES[profile].parameters())


def finish(cfg: LLPRunConfig, out: str, run_dir: str, artifacts: list[str], seconds: float) -> dict:
    """After a local run: copy the report next to the run and print the table."""
    from semisup_core.llp.report import ROWS
    return finish_report(cfg.seed, out, run_dir, artifacts, seconds, "llp-report", ROWS,
                         "report.html, rounds.png")


if __name__ == "__main__":
    compile_main(llp, __file__)
