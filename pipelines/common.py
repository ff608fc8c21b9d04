"""Pipeline pieces every method's pipeline shares, so that their tables compare on one split
(the data and dedup steps) and their teacher/student rounds are one definition."""

import os

from kfp import dsl

from components.data.component import import_data, materialise, split_data
from components.dedup.component import dedup as dedup_step
from components.embed.component import embed
from components.evaluate.component import evaluate
from components.score.component import score
from components.select.component import select
from components.train.component import train
from components.workers.component import joined, worker_indices
from semisup_core.dedup.stage import DedupSpec


def demo_data(data_root, fashion_mnist, mnist, labels_per_class, seed, dedup, dedup_embedder,
              dedup_threshold, split_order="permutation", dedup_verifier="") -> tuple[dict, object]:
    """import + split (N labels per class; the rest of Fashion-MNIST and the MNIST distractors
    unlabelled) -> embed the test set and the pool -> dedup. Returns the datasets (labelled,
    pool = the deduplicated pool, oracle, test) and the dedup task."""
    imports = {name: import_data(source=src_kind, src=src, root=data_root, name=name, split=split)
               .set_display_name(f"import {name}")
               for name, src_kind, src, split in (
                   ("fmnist-train", "fashion-mnist", fashion_mnist, "train"),
                   ("fmnist-test", "fashion-mnist", fashion_mnist, "test"),
                   ("mnist-train", "mnist", mnist, "train"))}
    split = split_data(dataset=imports["fmnist-train"].outputs["dataset"], root=data_root,
                       labels_per_class=labels_per_class, seed=seed,
                       distractor=imports["mnist-train"].outputs["dataset"], order=split_order)
    # every dataset travels as an artifact (a reference to shards under data_root): kfp.local
    # 2.17 replaces task-output *parameters* that enter a ParallelFor with the loop item
    data = {"labelled": split.outputs["labelled"], "pool": split.outputs["pool"],
            "oracle": split.outputs["oracle"], "test": imports["fmnist-test"].outputs["dataset"]}
    emb_test = embed(dataset=data["test"], model=dedup_embedder, enabled=dedup)
    emb_test.set_display_name("dedup: embed test set")
    emb_pool = embed(dataset=data["pool"], model=dedup_embedder, enabled=dedup)
    emb_pool.set_display_name("dedup: embed pool")
    dd = dedup_step(pool=data["pool"], pool_embeddings=emb_pool.outputs["embeddings"],
                    eval_embeddings=emb_test.outputs["embeddings"], threshold=dedup_threshold,
                    seed=seed, enabled=dedup, verifier=dedup_verifier,
                    verify_candidates=DedupSpec().verify_candidates)
    dd.set_display_name("dedup: pool vs test set")
    data["pool"] = dd.outputs["deduped"]  # what the methods read: the deduplicated pool
    return data, dd


def score_pool(label: str, teacher, data: dict, p: dict):
    """Score the pool with ``teacher``, split over ``p["score_workers"]`` parallel tasks (a
    teacher/student round's first half; ``p``: the run's selection and training parameters)."""
    idx = worker_indices(n=p["score_workers"]).set_display_name(f"{label}: shard groups")
    with dsl.ParallelFor(items=idx.output) as w:
        scored = score(teacher=teacher, pool=data["pool"], top_p=p["top_p"], partial_k=p["k"],
                       use_logits=p["use_logits"], worker=w, num_workers=p["score_workers"])
        scored.set_display_name(f"{label}: score")
    return scored


def student_from(label: str, scores: dict, data: dict, p: dict, k, parallel: bool = True):
    """Select top-K -> materialise -> pre-train -> fine-tune -> evaluate both, from one
    teacher's scores (``scores``: select's ``scores`` or ``reuse``). ``p["restrict"]`` and
    ``p["candidates"]`` (an artifact, or absent) restrict the selection to tag candidates.
    The selected images are copied by ``p["materialise_workers"]`` parallel tasks (a
    ParallelFor) into select's ``selected`` output; ``parallel`` false (a student inside
    another ParallelFor: the K sweep) copies them in the select task itself."""
    tags = {"candidates": p["candidates"]} if p.get("candidates") is not None else {}
    sel = select(**scores, pool=data["pool"],
                 strategy=p["strategy"], k=k, k_law=p["k_law"], threshold=p["threshold"],
                 seed=p["seed"], oracle=data["oracle"], restrict=p.get("restrict", "none"),
                 materialise=not parallel, **tags).set_display_name(f"{label}: select")
    after = []
    if parallel:
        idx = worker_indices(n=p["materialise_workers"])
        idx.set_display_name(f"{label}: materialise tasks")
        with dsl.ParallelFor(items=idx.output) as w:
            part = materialise(manifest=sel.outputs["manifest"], pool=data["pool"],
                               selected=sel.outputs["selected"], worker=w,
                               num_workers=p["materialise_workers"])
            part.set_display_name(f"{label}: materialise")
        after = [joined(done=dsl.Collected(part.output))
                 .set_display_name(f"{label}: selected set written")]
    pre = train(data=sel.outputs["selected"], recipe=p["student"], seed=p["seed"],
                checkpoints=p["workdir"], launcher=p["launcher"]).after(*after)
    pre.set_display_name(f"{label}: pre-train student")
    pre_eval = evaluate(model=pre.outputs["model"], data=data["test"],
                        name="student, pre-trained only", selection=sel.outputs["metrics"])
    ft = train(data=data["labelled"], recipe=p["finetune"], seed=p["seed"],
               init_from=pre.outputs["model"], inferred=sel.outputs["selected"],
               checkpoints=p["workdir"], launcher=p["launcher"]).after(*after)
    ft.set_display_name(f"{label}: fine-tune student")
    ft_eval = evaluate(model=ft.outputs["model"], data=data["test"], name="student, fine-tuned",
                       selection=sel.outputs["metrics"])
    pre_eval.set_display_name(f"{label}: evaluate pre-trained student")
    ft_eval.set_display_name(f"{label}: evaluate fine-tuned student")
    return {"select": sel, "pretrain": pre_eval, "student": ft, "eval": ft_eval}


def demo_arguments(cfg, out: str, local: bool = True) -> dict:
    """The arguments of ``demo_data`` and the launcher from a method's validated config (a
    ``DemoData`` with ``dedup`` and ``launcher``); ``out`` is its output dir (absolute for local
    runs, where relative raw-data paths are made absolute too; on a cluster every location
    must be a store URI the pods can read)."""
    from semisup_core import storage

    def absolute(p: str) -> str:
        return os.path.abspath(p) if local and p and storage.is_local(p) else p

    return dict(data_root=storage.join(out, "data"),
                workdir=storage.join(out, f"seed-{cfg.seed}", "work"),
                fashion_mnist=absolute(cfg.fashion_mnist),
                mnist=absolute(cfg.mnist) if cfg.distractors else "",
                labels_per_class=cfg.labels_per_class, seed=cfg.seed, split_order=cfg.split_order,
                dedup=cfg.dedup.enabled, dedup_embedder=cfg.dedup.embedder,
                dedup_threshold=cfg.dedup.threshold, dedup_verifier=cfg.dedup.verifier or "",
                launcher=cfg.launcher.model_dump(mode="json"))


def finish_report(seed: int, out: str, run_dir: str, artifacts: list[str], seconds: float,
                  task: str, rows: tuple[str, ...], also: str) -> dict:
    """After a local run of a method's pipeline: copy its report task's ``report`` artifact
    (``task``: the report component's name) to ``out/seed-N/report``, print the comparison
    table (``rows``) and the dedup line; ``also``: the other files named in the last line."""
    from semisup.local_run import copy_tree
    from semisup_core import storage
    from semisup_core.report import dedup_summary, format_table
    found = [a for a in artifacts if os.path.basename(os.path.dirname(a)).startswith(task)
             and os.path.basename(a) == "report"]
    if not found:
        raise RuntimeError(f"no report under {run_dir}: did the pipeline finish?")
    seed_dir = os.path.join(out, f"seed-{seed}")
    copy_tree(found[0], os.path.join(seed_dir, "report"))
    metrics = storage.read_json(os.path.join(seed_dir, "report", "metrics.json"))
    print("\n" + format_table(metrics["entries"], rows))
    if metrics.get("dedup"):
        print("\n" + dedup_summary(metrics["dedup"]))
    print(f"\nFinished in {seconds / 60:.1f} min. Report: "
          f"{os.path.join(seed_dir, 'report', 'report.md')} (and {also})")
    return metrics
