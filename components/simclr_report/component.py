"""KFP component of SimCLRv2's report: the comparison table, the linear probe per pre-training
epoch, the oracle's view of the teacher's labels on the pool."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components import image


@dsl.component(base_image=image("evaluate"), install_kfp_package=False)
def simclr_report(baseline: Input[Metrics], finetuned: Input[Metrics], distilled: Input[Metrics],
                  pretrained: Input[Model], teacher: Input[Model], labelled: Input[Dataset],
                  pool: Input[Dataset], test: Input[Dataset], oracle: Input[Dataset],
                  markdown: Output[Markdown], html: Output[HTML], report: Output[Artifact],
                  summary: Output[Metrics], from_encoder: Input[Metrics] = None,
                  dedup: Input[Dataset] = None, temperature: float = 1.0) -> str:
    """The comparison table of the supervised baseline and SimCLRv2's models, the linear probe
    of every pre-training snapshot, and the oracle's view of the teacher's labels on the pool.

    Args:
        baseline: evaluation of the supervised baseline (labels only).
        finetuned: evaluation of the model fine-tuned from the projection head's layer.
        distilled: evaluation of the distilled student.
        pretrained: the contrastive step's model (its snapshots/epoch-NNN).
        teacher: the fine-tuned model the student distilled (its labels on the pool).
        labelled: the labelled split (the linear probe's training set).
        pool: the unlabelled pool (the dedup step's deduplicated pool).
        test: the test set (the probe's evaluation, class names).
        oracle: the pool's hidden labels (analysis only).
        from_encoder: evaluation of the model fine-tuned from the encoder (optional row).
        dedup: the dedup step's result (its count goes in the report).
        temperature: the distillation's tau (the teacher's confidences).

    Returns:
        markdown: the comparison table.
        html: table and plots in one page (PNGs inlined).
        report: report.md, report.html, metrics.json and the PNGs.
        summary: top-1 of every row and the gains over the baseline.
        Output: the comparison table as Markdown text.
    """
    from components.simclr_report.runner import run as write
    return write(baseline=baseline, finetuned=finetuned, distilled=distilled,
                 pretrained=pretrained, teacher=teacher, labelled=labelled, pool=pool, test=test,
                 oracle=oracle, markdown=markdown, html=html, report=report, summary=summary,
                 from_encoder=from_encoder, dedup=dedup, temperature=temperature)
