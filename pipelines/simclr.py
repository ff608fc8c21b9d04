"""SimCLRv2 (Chen et al. 2020) as a KFP pipeline.

data (the demo's split) -> dedup (embed test set and pool, remove the pool's near-duplicates of
the test set) -> supervised baseline on the labels; contrastive pre-training on labels + pool
(labels unused) -> fine-tuning on the labels from the projection head's first layer (and from
the encoder) -> distillation of the fine-tuned teacher into a student on labels + pool ->
evaluate every model -> report (the comparison table every method shows, the linear probe per
pre-training epoch, the oracle's view of the teacher's labels on the pool).

Defaults are the SimCLR stage's own (semisup_core.simclr.run.SimCLRRunConfig: its recipes) and
dedup's (DedupSpec). ``semisup run simclr --config configs/simclr_demo.yaml`` runs it under
kfp.local. Recompile after any change: ``.venv/bin/semisup pipelines compile``.
"""

from kfp import dsl
from kfp.dsl import pipeline_context

from components.contrastive.component import contrastive
from components.distill.component import distill as distill_step
from components.evaluate.component import evaluate
from components.simclr_report.component import simclr_report
from components.train.component import train
from pipelines import compile_main, on_platform, with_resource_docs
from pipelines.common import demo_arguments, demo_data, finish_report
from pipelines.resources import DEFAULT as _R, PROFILES
from semisup_core.dedup.stage import DedupSpec
from semisup_core.simclr.run import SimCLRRunConfig
from semisup_core.train.config import LauncherSpec

NAME = "simclr"
PIPELINE = "simclr"
CONFIG = SimCLRRunConfig
_S, _DD = SimCLRRunConfig(), DedupSpec()


def _recipe(r) -> dict:
    return r.model_dump(mode="json", exclude_none=True)


@dsl.pipeline(name=NAME, description="SimCLRv2 (Chen et al. 2020): contrastive pre-training on "
              "the pool, fine-tuning on the labels from the projection head, distillation into a "
              "student, against the supervised baseline")
@with_resource_docs
def simclr(data_root: str = _S.out + "/data",
           workdir: str = "",
           fashion_mnist: str = _S.fashion_mnist,
           mnist: str = _S.mnist,
           labels_per_class: int = _S.labels_per_class,
           split_order: str = _S.split_order,
           seed: int = _S.seed,
           baseline: dict = _recipe(_S.baseline),
           pretrain: dict = _recipe(_S.pretrain),
           finetune: dict = _recipe(_S.finetune),
           student: dict = _recipe(_S.distill),
           distill_temperature: float = _S.distill_temperature,
           dedup: bool = _DD.enabled,
           dedup_embedder: str = _DD.embedder,
           dedup_threshold: float = _DD.threshold,
           dedup_verifier: str = _DD.verifier or "",
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
    """SimCLRv2's three steps and the supervised baseline on one split, compared.

    Args:
        data_root: directory URI for imported datasets and splits, shared by runs (s3://, minio:// or a path).
        workdir: store URI for training checkpoints so restarted steps resume ('' = none).
        fashion_mnist: Fashion-MNIST IDX directory: the labelled task.
        mnist: MNIST IDX directory, mixed into the pool as distractors ('' = no distractors).
        labels_per_class: labelled images per class; the rest of the training set joins the pool.
        split_order: permutation (every recorded result) or hash (streaming; the split pipeline
            writes it as parallel tasks into the same data_root, where this run reuses it).
        seed: seed of the labelled draw and of every model.
        baseline: the supervised baseline's recipe (labels only).
        pretrain: contrastive pre-training's recipe (objective contrastive; views simclr, proj_layers, proj_dim, temperature, memory; optim lars).
        finetune: fine-tuning's recipe; model_kwargs.head_mlp picks the projection-head layer it starts from (1: SimCLRv2's choice); a second fine-tuning starts from the encoder (head_mlp 0), the paper's comparison.
        student: the distilled student's recipe (objective distill; its model: the encoder's = self-distillation, a smaller one = big-to-small).
        distill_temperature: tau of the distillation's softmaxes.
        dedup: remove the pool's near-duplicates of the test set before pre-training on it.
        dedup_embedder: embed model for dedup: pixels, efficientnet_lite0 or a model directory URI.
        dedup_threshold: cosine similarity at and above which a pool image duplicates a test image
            (with a verifier: its logit margin).
        dedup_verifier: a trained pair_verifier's model directory URI ("": none; docs/dedup.md):
            each pool image's 5 nearest test images are verified pair by pair.
        launcher: where every training task trains (LauncherSpec): pod, pytorchjob (pods run images/contrastive, images/train, images/distill) or torchrun.
    """
    data, dd = demo_data(data_root, fashion_mnist, mnist, labels_per_class, seed, dedup,
                         dedup_embedder, dedup_threshold, split_order, dedup_verifier)
    base = train(data=data["labelled"], recipe=baseline, seed=seed, checkpoints=workdir,
                 launcher=launcher).set_display_name("train supervised baseline")
    base_eval = evaluate(model=base.outputs["model"], data=data["test"],
                         name="supervised baseline").set_display_name("evaluate baseline")
    pre = contrastive(labelled=data["labelled"], pool=data["pool"], recipe=pretrain, seed=seed,
                      checkpoints=workdir, launcher=launcher).set_display_name("pre-train (SimCLR)")
    ft = train(data=data["labelled"], recipe=finetune, seed=seed, init_from=pre.outputs["model"],
               checkpoints=workdir, launcher=launcher).set_display_name("fine-tune")
    ft_eval = evaluate(model=ft.outputs["model"], data=data["test"],
                       name="SimCLR pre-trained + fine-tuned").set_display_name("evaluate fine-tuned")
    enc = train(data=data["labelled"], recipe=finetune, seed=seed, init_from=pre.outputs["model"],
                checkpoints=workdir, launcher=launcher,
                head_mlp=0).set_display_name("fine-tune from the encoder")
    enc_eval = evaluate(model=enc.outputs["model"], data=data["test"],
                        name="SimCLR fine-tuned from the encoder").set_display_name(
        "evaluate fine-tuned from the encoder")
    dist = distill_step(labelled=data["labelled"], pool=data["pool"], teacher=ft.outputs["model"],
                        recipe=student, seed=seed, temperature=distill_temperature,
                        checkpoints=workdir, launcher=launcher).set_display_name("distil")
    dist_eval = evaluate(model=dist.outputs["model"], data=data["test"],
                         name="SimCLR distilled").set_display_name("evaluate distilled")
    simclr_report(baseline=base_eval.outputs["metrics"], finetuned=ft_eval.outputs["metrics"],
                  distilled=dist_eval.outputs["metrics"], from_encoder=enc_eval.outputs["metrics"],
                  pretrained=pre.outputs["model"],
                  teacher=ft.outputs["model"], labelled=data["labelled"], pool=data["pool"],
                  test=data["test"], oracle=data["oracle"], dedup=dd.outputs["result"],
                  temperature=distill_temperature).set_display_name("report")
    on_platform(pipeline_context.Pipeline.get_default_pipeline().tasks.values(), locals())


def arguments(cfg: SimCLRRunConfig, out: str, local: bool = True, profile: str = "cpu") -> dict:
    """Pipeline arguments from a validated SimCLRRunConfig (``common.demo_arguments``)."""
    return dict(demo_arguments(cfg, out, local), baseline=_recipe(cfg.baseline),
                pretrain=_recipe(cfg.pretrain), finetune=_recipe(cfg.finetune),
                student=_recipe(cfg.distill), distill_temperature=cfg.distill_temperature,
                **PROFILES[profile].parameters())


def finish(cfg: SimCLRRunConfig, out: str, run_dir: str, artifacts: list[str], seconds: float) -> dict:
    """After a local run: copy the report next to the run and print the table."""
    from semisup_core.simclr.report import ROWS
    return finish_report(cfg.seed, out, run_dir, artifacts, seconds, "simclr-report", ROWS,
                         "report.html, probe.png")


if __name__ == "__main__":
    compile_main(simclr, __file__)
