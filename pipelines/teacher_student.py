"""The teacher/student pipeline of Yalniz et al. 2019 as a KFP pipeline.

data -> dedup (embed test set and pool, remove the pool's near-duplicates of the test set) ->
supervised baseline + teacher -> score the pool (ParallelFor over worker indices) ->
select (dsl.Collected) -> pre-train the student -> fine-tune -> evaluate every model -> report.
Variants are parameters: ``self_training`` (also run the student architecture as its own
teacher: the baseline scores the pool), ``strategy``, ``k``, ``top_p``, ``rounds`` (1-3: the
student becomes the next teacher), ``k_sweep`` (extra K values for accuracy vs K) and the
semi-weakly supervised variant (Yalniz et al. §3.3): ``teacher_init`` (the teacher fine-tuned
from a weak-pre-trained model) and ``restrict`` + ``candidates`` (the selection restricted to
the pool's tag candidates).

Defaults are the demo's (semisup_core.teacher_student.demo.DemoConfig), so a run started from the KFP UI with
no changes is the demo. Recompile after any change (a test fails on a stale YAML):

    .venv/bin/python -m pipelines.teacher_student          # rewrites teacher_student.yaml
"""

import os

from kfp import dsl
from kfp.dsl import pipeline_context

from components.evaluate.component import evaluate, gather_metrics
from components.reference.component import reference
from components.report.component import report
from components.train.component import train
from pipelines import compile_main, on_platform, with_resource_docs
from pipelines.common import demo_arguments, demo_data, score_pool, student_from
from pipelines.resources import DEFAULT as _R, PROFILES
from semisup_core import storage
from semisup_core.dedup.stage import DedupSpec
from semisup_core.teacher_student.demo import DemoConfig
from semisup_core.report import dedup_summary, format_table
from semisup_core.teacher_student.report import ROWS
from semisup_core.train.config import LauncherSpec

NAME = "teacher-student"
PIPELINE = "teacher_student"
#: the typed config `semisup run teacher_student --config` validates (the demo's)
CONFIG = DemoConfig
MAX_ROUNDS = 3
_D = DemoConfig()
_DD = DedupSpec()  # the dedup step's defaults are the stage's own

def _round(label: str, teacher, data: dict, p: dict):
    scored = score_pool(label, teacher, data, p)
    return student_from(label, {"scores": dsl.Collected(scored.outputs["scores"])}, data, p, p["k"])


@dsl.pipeline(name=NAME, description="Billion-scale semi-supervised learning (Yalniz et al. "
              "2019): teacher -> ranked top-K per class -> student pre-training -> fine-tuning")
@with_resource_docs
def teacher_student(
        data_root: str = _D.out + "/data",
        workdir: str = "",
        fashion_mnist: str = _D.fashion_mnist,
        mnist: str = _D.mnist,
        labels_per_class: int = _D.labels_per_class,
        split_order: str = _D.split_order,
        seed: int = _D.seed,
        teacher: dict = _D.teacher.model_dump(mode="json", exclude_none=True),
        student: dict = _D.student.model_dump(mode="json", exclude_none=True),
        baseline: dict = _D.baseline.model_dump(mode="json", exclude_none=True),
        finetune: dict = _D.finetune.model_dump(mode="json", exclude_none=True),
        top_p: int = _D.selection.top_p,
        k: int = _D.selection.k,
        strategy: str = _D.selection.strategy,
        k_law: str = _D.selection.k_law,
        threshold: float = _D.selection.threshold,
        use_logits: bool = _D.selection.use_logits,
        score_workers: int = _D.selection.workers,
        materialise_workers: int = _D.selection.materialise_workers,
        dedup: bool = _DD.enabled,
        dedup_embedder: str = _DD.embedder,
        dedup_threshold: float = _DD.threshold,
        dedup_verifier: str = _DD.verifier or "",
        self_training: bool = _D.self_training,
        rounds: int = _D.rounds,
        k_sweep: list = _D.k_sweep,
        teacher_init: str = "",
        restrict: str = _D.selection.restrict,
        candidates: str = _D.selection.candidates or "",
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
    """The teacher/student pipeline, its variants as parameters.

    Args:
        data_root: directory URI for imported datasets and splits, shared by runs (s3://, minio:// or a path).
        workdir: store URI for training checkpoints so restarted steps resume ('' = none).
        fashion_mnist: Fashion-MNIST IDX directory: the labelled task.
        mnist: MNIST IDX directory, mixed into the pool as distractors ('' = no distractors).
        labels_per_class: labelled images per class; the rest of the training set joins the pool.
        split_order: permutation (every recorded result) or hash (streaming; the split pipeline
            writes it as parallel tasks into the same data_root, where this run reuses it).
        seed: seed of the labelled draw and of every model.
        teacher: the teacher's training recipe (model, model_kwargs, epochs, batch_size, optim, augment).
        student: the student's pre-training recipe on the selected set.
        baseline: the supervised baseline's recipe: the student architecture on the labels alone (also the self-training teacher).
        finetune: the student's fine-tuning recipe on the labels; enabled=false skips it, labels=inferred adds the selected set.
        top_p: classes kept per image when scoring (paper: 10; 10 classes: 1-2).
        k: images selected per class (paper: 16k of 1B images for 1000 classes).
        strategy: balanced (paper), unbalanced, random (balanced-with-tags control) or threshold.
        k_law: unbalanced strategy: frequency (predicted class frequency) or zipf.
        threshold: threshold strategy: minimum teacher score kept.
        use_logits: rank by raw logits instead of softmax (the paper's ablation).
        score_workers: parallel scoring tasks, each taking every n-th shard of the pool.
        materialise_workers: parallel tasks copying a round's selected images into the student's training set (each its n-th of the selected pool shards).
        dedup: remove the pool's near-duplicates of the test set before scoring (embed + dedup).
        dedup_embedder: embed model for dedup: pixels, efficientnet_lite0 or a model directory URI.
        dedup_threshold: cosine similarity at and above which a pool image duplicates a test image
            (with a verifier: its logit margin).
        dedup_verifier: a trained pair_verifier's model directory URI ("": none; docs/dedup.md):
            each pool image's 5 nearest test images are verified pair by pair.
        self_training: also run the self-training variant (teacher = the baseline, same architecture as the student).
        rounds: teacher/student rounds, 1-3; the student of a round is the next round's teacher.
        k_sweep: extra K values, each pre-training and fine-tuning another student (accuracy vs K).
        teacher_init: semi-weakly supervised (Yalniz et al. 3.3): a (weak-)pre-trained model directory URI the teacher starts from, fine-tuned on the labels with the teacher recipe in that model's architecture (e.g. the wsl pipeline's weak-train model; '' = from scratch).
        restrict: none, tags (an image stays a candidate for class c only if its tags map to c: with strategy random the paper's balanced-with-tags; set top_p to the class count) or targeted (only images with any candidate class); every selection of the run.
        candidates: the tag candidates, a Parquet table URI (key, class_id; the synsets stage's candidates.parquet); '' = none; required unless restrict is none.
        launcher: where every training task trains (LauncherSpec): backend pod (its own pod), pytorchjob (a PyTorchJob: workers, nproc_per_node, gpus_per_node, cpu, memory, elastic_min/max, namespace; needs workdir on the store) or torchrun (the launcher's local backend, what kfp.local runs).
    """
    data, dd = demo_data(data_root, fashion_mnist, mnist, labels_per_class, seed, dedup,
                         dedup_embedder, dedup_threshold, split_order, dedup_verifier)
    # the optional artifacts from their URIs ('' = a reference to none: KFP's importer refuses
    # an empty URI)
    tags = reference(uri=candidates).set_display_name("tag candidates")
    init = reference(uri=teacher_init).set_display_name("teacher init")
    p = dict(seed=seed, student=student, finetune=finetune, top_p=top_p, k=k, strategy=strategy,
             k_law=k_law, threshold=threshold, use_logits=use_logits, workdir=workdir,
             score_workers=score_workers, materialise_workers=materialise_workers,
             launcher=launcher, restrict=restrict,
             candidates=tags.outputs["artifact"])

    base = train(data=data["labelled"], recipe=baseline, seed=seed,
                 checkpoints=workdir, launcher=launcher).set_display_name("train supervised baseline")
    base_eval = evaluate(model=base.outputs["model"], data=data["test"],
                         name="supervised baseline").set_display_name("evaluate baseline")
    teach = train(data=data["labelled"], recipe=teacher, seed=seed,
                  init_from=init.outputs["artifact"], checkpoints=workdir,
                  launcher=launcher).set_display_name("train teacher")
    teach_eval = evaluate(model=teach.outputs["model"], data=data["test"],
                          name="teacher").set_display_name("evaluate teacher")
    r1 = _round("round 1", teach.outputs["model"], data, p)

    with dsl.ParallelFor(items=k_sweep) as kk:
        sweep = student_from("K sweep", {"reuse": r1["select"].outputs["manifest"]}, data, p, kk,
                             parallel=False)
    gathered = gather_metrics(items=dsl.Collected(sweep["eval"].outputs["metrics"]))
    gathered.set_display_name("K sweep: gather")
    inputs = dict(baseline=base_eval.outputs["metrics"], teacher=teach_eval.outputs["metrics"],
                  pretrained=r1["pretrain"].outputs["metrics"], student=r1["eval"].outputs["metrics"],
                  sweep=gathered.outputs["gathered"],
                  manifest=r1["select"].outputs["manifest"], test=data["test"], pool=data["pool"],
                  oracle=data["oracle"], dedup=dd.outputs["result"])
    with dsl.If(self_training == True, name="self-training"):  # noqa: E712 (a KFP condition)
        st = _round("self-training", base.outputs["model"], data, p)
        report(self_training=st["eval"].outputs["metrics"], **inputs).set_display_name("report")
    with dsl.Else(name="no-self-training"):
        # (kfp.local 2.17 cannot resolve dsl.OneOf, so each branch has its own report step)
        report(**inputs).set_display_name("report")

    with dsl.If(rounds >= 2, name="round-2"):
        r2 = _round("round 2", r1["student"].outputs["model"], data, p)
        with dsl.If(rounds >= MAX_ROUNDS, name="round-3"):
            _round("round 3", r2["student"].outputs["model"], data, p)
    on_platform(pipeline_context.Pipeline.get_default_pipeline().tasks.values(), locals())

def arguments(cfg: DemoConfig, out: str, local: bool = True, profile: str = "cpu") -> dict:
    """Pipeline arguments from a validated DemoConfig (``common.demo_arguments``);
    ``profile`` sets the resource parameters (pipelines/resources.py)."""
    sel = cfg.selection
    return dict(demo_arguments(cfg, out, local),
                teacher=cfg.teacher.model_dump(mode="json", exclude_none=True),
                student=cfg.student.model_dump(mode="json", exclude_none=True),
                baseline=cfg.baseline.model_dump(mode="json", exclude_none=True),
                finetune=cfg.finetune.model_dump(mode="json", exclude_none=True),
                top_p=sel.top_p, k=sel.k, strategy=sel.strategy, k_law=sel.k_law,
                threshold=sel.threshold, use_logits=sel.use_logits, score_workers=sel.workers,
                materialise_workers=sel.materialise_workers,
                self_training=cfg.self_training, rounds=cfg.rounds, k_sweep=list(cfg.k_sweep),
                restrict=sel.restrict, candidates=sel.candidates or "",
                teacher_init=cfg.teacher_init or "",
                **PROFILES[profile].parameters())


def finish(cfg: DemoConfig, out: str, run_dir: str, artifacts: list[str], seconds: float) -> dict:
    """After a local run: copy the report next to the run, print the table and the artifacts."""
    from semisup.local_run import copy_tree
    # the report step of whichever self-training branch ran (report or report-2)
    found = [a for a in artifacts if os.path.basename(os.path.dirname(a)).startswith("report")
             and os.path.basename(a) == "report"]
    if not found:
        raise RuntimeError(f"no report under {run_dir}: did the pipeline finish?")
    report_dir = found[0]
    seed_dir = os.path.join(out, f"seed-{cfg.seed}")
    copy_tree(report_dir, os.path.join(seed_dir, "report"))
    metrics = storage.read_json(os.path.join(seed_dir, "report", "metrics.json"))
    print("\n" + format_table(metrics["entries"], ROWS))
    if metrics.get("dedup"):
        print("\n" + dedup_summary(metrics["dedup"]))
    print(f"\nFinished in {seconds / 60:.1f} min. Artifacts (kfp.local pipeline root {run_dir}):")
    for a in artifacts:
        print("  " + os.path.relpath(a, run_dir))
    print(f"Data (imports, splits): {os.path.join(out, 'data')}\n"
          f"Checkpoints: {os.path.join(seed_dir, 'work')}\n"
          f"Report: {os.path.join(seed_dir, 'report', 'report.md')} (and report.html)")
    return metrics


if __name__ == "__main__":
    compile_main(teacher_student, __file__)
