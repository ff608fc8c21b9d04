"""Weakly supervised pre-training (Mahajan et al. 2018) and the semi-weakly supervised
teacher/student (Yalniz et al. 2019 §3.3) as a KFP pipeline.

data (the demo's split) -> dedup (embed test set and pool, remove the pool's near-duplicates of
the test set) -> synsets (the pool's SIMULATED tags, from its hidden labels, -> WordNet
synsets: vocabulary, soft targets, the resampled weak training set, the target classes' tag
candidates) -> supervised baseline on the labels; weak pre-training on the resampled set ->
fine-tuning on the labels -> evaluate -> with ``semi_weak``, teacher/student from the supervised
baseline (plain) and from the weak-pre-trained, fine-tuned teacher (semi-weak), the latter also
with the selection restricted to tag candidates (ranked: our extension; random per class: the
paper's balanced-with-tags), all from one scoring per teacher -> report (the comparison table
every method shows, the synsets audit, the linear probe, the SIMULATED banner).

Defaults are the WSL stage's own (semisup_core.wsl.run.WSLRunConfig: its recipes, tags,
synsets and selection). ``semisup run wsl --config configs/wsl_demo.yaml`` runs it under
kfp.local. Recompile after any change: ``.venv/bin/semisup pipelines compile``.
"""

from kfp import dsl
from kfp.dsl import pipeline_context

from components.evaluate.component import evaluate
from components.synsets.component import synsets as synsets_step
from components.train.component import train
from components.weak_train.component import weak_train
from components.wsl_report.component import wsl_report
from pipelines import compile_main, on_platform, with_resource_docs
from pipelines.common import demo_arguments, demo_data, finish_report, score_pool, student_from
from pipelines.resources import DEFAULT as _R, PROFILES
from semisup_core.errors import ConfigError
from semisup_core.train.config import LauncherSpec
from semisup_core.wsl.run import WSLRunConfig

NAME = "wsl"
PIPELINE = "wsl"
CONFIG = WSLRunConfig
_S = WSLRunConfig()


def _recipe(r) -> dict:
    return r.model_dump(mode="json", exclude_none=True)


def _synsets(s) -> dict:
    """The synsets step's settings (its data, out and seed are the run's)."""
    return s.model_dump(mode="json", exclude={"data", "out", "seed"})


@dsl.pipeline(name=NAME, description="Weakly supervised pre-training on tags merged into WordNet "
              "synsets (Mahajan et al. 2018), its transfer to the labels, and the semi-weakly "
              "supervised teacher/student (Yalniz et al. 2019), against the supervised baseline")
@with_resource_docs
def wsl(data_root: str = _S.out + "/data",
        workdir: str = "",
        fashion_mnist: str = _S.fashion_mnist,
        mnist: str = _S.mnist,
        labels_per_class: int = _S.labels_per_class,
        split_order: str = _S.split_order,
        seed: int = _S.seed,
        tag_noise_rate: float = _S.tags.noise_rate,
        tag_confusion_share: float = _S.tags.confusion_share,
        tag_own_weight: float = _S.tags.own_weight,
        synsets: dict = _synsets(_S.synsets),
        baseline: dict = _recipe(_S.baseline),
        pretrain: dict = _recipe(_S.pretrain),
        finetune: dict = _recipe(_S.finetune),
        student: dict = _recipe(_S.student),
        student_finetune: dict = _recipe(_S.student_finetune),
        top_p: int = _S.selection.top_p,
        k: int = _S.selection.k,
        strategy: str = _S.selection.strategy,
        k_law: str = _S.selection.k_law,
        threshold: float = _S.selection.threshold,
        use_logits: bool = _S.selection.use_logits,
        score_workers: int = _S.selection.workers,
        materialise_workers: int = _S.selection.materialise_workers,
        semi_weak: bool = _S.semi_weak,
        dedup: bool = _S.dedup.enabled,
        dedup_embedder: str = _S.dedup.embedder,
        dedup_threshold: float = _S.dedup.threshold,
        dedup_verifier: str = _S.dedup.verifier or "",
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
    """Weak pre-training, its transfer and the teacher/student variants on one split, compared.

    Args:
        data_root: directory URI for imported datasets and splits, shared by runs (s3://, minio:// or a path).
        workdir: store URI for training checkpoints so restarted steps resume ('' = none).
        fashion_mnist: Fashion-MNIST IDX directory: the labelled task.
        mnist: MNIST IDX directory, mixed into the pool as distractors ('' = no distractors).
        labels_per_class: labelled images per class; the rest of the training set joins the pool.
        split_order: permutation (every recorded result) or hash (streaming; the split pipeline
            writes it as parallel tasks into the same data_root, where this run reuses it).
        seed: seed of the labelled draw, the simulated tags, the resampling and every model.
        tag_noise_rate: the pool's SIMULATED tags: share of tags replaced by noise.
        tag_confusion_share: simulated tags: share of the noise drawn from another class's tags.
        tag_own_weight: simulated tags: weight of a class's own synset lemmas against its hypernyms'.
        synsets: tags -> synsets (SynsetsConfig but data/out/seed): vocabulary (target, nouns or top), top_n, target_synsets (the candidates' classes), draws (resampled samples per image: weak pre-training's passes), power (0.5: square-root resampling), stop_tags, overrides, wordnet.
        baseline: the supervised baseline's recipe (labels only; the plain teacher/student's teacher).
        pretrain: weak pre-training's recipe (objective weak: 1/k soft targets; one epoch over the resampled set).
        finetune: fine-tuning the weak-pre-trained network on the labels (its architecture is the pre-trained one's); the semi-weak teacher.
        student: teacher/student: the student's pre-training recipe on the selected set.
        student_finetune: teacher/student: the student's fine-tuning on the labels (enabled, labels true|inferred).
        top_p: classes kept per image when scoring (restricting to tags needs all: the class count).
        k: images selected per class.
        strategy: the selection of the plain, semi-weak and tag-ranked variants: balanced (paper), unbalanced or threshold (the balanced-with-tags variant is random).
        k_law: unbalanced strategy: frequency (predicted class frequency) or zipf.
        threshold: threshold strategy: minimum teacher score kept.
        use_logits: rank by raw logits instead of softmax (the paper's ablation).
        score_workers: parallel scoring tasks per teacher, each taking every n-th shard of the pool.
        materialise_workers: parallel tasks copying each selection's images into its student's training set.
        semi_weak: also run the four teacher/student variants (plain, semi-weak, tag candidates ranked, balanced-with-tags).
        dedup: remove the pool's near-duplicates of the test set before anything uses it (embed + dedup).
        dedup_embedder: embed model for dedup: pixels, efficientnet_lite0 or a model directory URI.
        dedup_threshold: cosine similarity at and above which a pool image duplicates a test image
            (with a verifier: its logit margin).
        dedup_verifier: a trained pair_verifier's model directory URI ("": none; docs/dedup.md):
            each pool image's 5 nearest test images are verified pair by pair.
        launcher: where every training task trains (LauncherSpec): pod, pytorchjob (pods run images/weak-train, images/train) or torchrun.
    """
    data, dd = demo_data(data_root, fashion_mnist, mnist, labels_per_class, seed, dedup,
                         dedup_embedder, dedup_threshold, split_order, dedup_verifier)
    syn = synsets_step(data=data["pool"], spec=synsets, seed=seed, simulate_tags=True,
                       oracle=data["oracle"], noise_rate=tag_noise_rate,
                       confusion_share=tag_confusion_share,
                       own_weight=tag_own_weight).set_display_name("synsets (SIMULATED tags)")
    base = train(data=data["labelled"], recipe=baseline, seed=seed, checkpoints=workdir,
                 launcher=launcher).set_display_name("train supervised baseline")
    base_eval = evaluate(model=base.outputs["model"], data=data["test"],
                         name="supervised baseline").set_display_name("evaluate baseline")
    pre = weak_train(data=syn.outputs["train"], recipe=pretrain, seed=seed, checkpoints=workdir,
                     launcher=launcher).set_display_name("weak pre-train")
    ft = train(data=data["labelled"], recipe=finetune, seed=seed, init_from=pre.outputs["model"],
               checkpoints=workdir, launcher=launcher).set_display_name("fine-tune")
    ft_eval = evaluate(model=ft.outputs["model"], data=data["test"],
                       name="WSL pre-trained + fine-tuned").set_display_name("evaluate fine-tuned")
    inputs = dict(baseline=base_eval.outputs["metrics"], finetuned=ft_eval.outputs["metrics"],
                  pretrained=pre.outputs["model"], synsets=syn.outputs["result"],
                  labelled=data["labelled"], test=data["test"], dedup=dd.outputs["result"])
    with dsl.If(semi_weak == True, name="teacher-student"):  # noqa: E712 (a KFP condition)
        p = dict(seed=seed, student=student, finetune=student_finetune, top_p=top_p, k=k,
                 strategy=strategy, k_law=k_law, threshold=threshold, use_logits=use_logits,
                 workdir=workdir, score_workers=score_workers,
                 materialise_workers=materialise_workers, launcher=launcher)
        plain = score_pool("plain", base.outputs["model"], data, p)
        plain = student_from("plain", {"scores": dsl.Collected(plain.outputs["scores"])}, data,
                             p, k)
        semi = score_pool("semi-weak", ft.outputs["model"], data, p)
        semi = student_from("semi-weak", {"scores": dsl.Collected(semi.outputs["scores"])}, data,
                            p, k)
        # the tag-restricted variants read the semi-weak teacher's scores again (one scoring)
        again = {"reuse": semi["select"].outputs["manifest"]}
        tags = dict(p, restrict="tags", candidates=syn.outputs["candidates"])
        ranked = student_from("semi-weak, tags", again, data, tags, k)
        drawn = student_from("semi-weak, balanced-with-tags", again, data,
                             dict(tags, strategy="random"), k)
        wsl_report(plain=plain["eval"].outputs["metrics"],
                   semi_weak=semi["eval"].outputs["metrics"],
                   semi_weak_tags=ranked["eval"].outputs["metrics"],
                   semi_weak_tags_random=drawn["eval"].outputs["metrics"],
                   **inputs).set_display_name("report")
    with dsl.Else(name="no-teacher-student"):
        # (kfp.local 2.17 cannot resolve dsl.OneOf, so each branch has its own report step)
        wsl_report(**inputs).set_display_name("report")
    on_platform(pipeline_context.Pipeline.get_default_pipeline().tasks.values(), locals())


def arguments(cfg: WSLRunConfig, out: str, local: bool = True, profile: str = "cpu") -> dict:
    """Pipeline arguments from a validated WSLRunConfig (``common.demo_arguments``)."""
    if cfg.external:
        raise ConfigError("external (pre-training on another collection's tags) runs in one "
                          "process only: semisup stage wsl-run; the wsl pipeline has no such step")
    sel = cfg.selection
    return dict(demo_arguments(cfg, out, local), tag_noise_rate=cfg.tags.noise_rate,
                tag_confusion_share=cfg.tags.confusion_share, tag_own_weight=cfg.tags.own_weight,
                synsets=_synsets(cfg.synsets), baseline=_recipe(cfg.baseline),
                pretrain=_recipe(cfg.pretrain), finetune=_recipe(cfg.finetune),
                student=_recipe(cfg.student), student_finetune=_recipe(cfg.student_finetune),
                top_p=sel.top_p, k=sel.k, strategy=sel.strategy, k_law=sel.k_law,
                threshold=sel.threshold, use_logits=sel.use_logits, score_workers=sel.workers,
                materialise_workers=sel.materialise_workers, semi_weak=cfg.semi_weak,
                **PROFILES[profile].parameters())


def finish(cfg: WSLRunConfig, out: str, run_dir: str, artifacts: list[str], seconds: float) -> dict:
    """After a local run: copy the report next to the run, print the table (and the banner
    when the tags were simulated)."""
    from semisup_core.wsl.report import ROWS, banner
    metrics = finish_report(cfg.seed, out, run_dir, artifacts, seconds, "wsl-report", ROWS,
                            "report.html, per_class_recall.png")
    if metrics.get("tags_simulated"):
        print("\n" + banner(metrics["tags_simulated"]))
    return metrics


if __name__ == "__main__":
    compile_main(wsl, __file__)
