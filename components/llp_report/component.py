"""KFP component of LLP's report: the comparison table, the oracle's view of the pseudo-labels
(precision, coverage, distractors; by confidence rank and per propagation round)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components import image


@dsl.component(base_image=image("evaluate"), install_kfp_package=False)
def llp_report(baseline: Input[Metrics], llp: Input[Metrics], model: Input[Model],
               test: Input[Dataset], oracle: Input[Dataset], markdown: Output[Markdown],
               html: Output[HTML], report: Output[Artifact], summary: Output[Metrics],
               dedup: Input[Dataset] = None, finetuned: Input[Metrics] = None) -> str:
    """The comparison table of LLP, LLP fine-tuned and the supervised baseline, and the oracle's
    view of LLP's pseudo-labels (overall, by confidence rank and per propagation round).

    Args:
        baseline: evaluation of the supervised baseline (labels only, same architecture).
        llp: evaluation of the LLP model.
        model: the llp step's model (its pseudo-labels).
        test: the test set (class names).
        oracle: the pool's hidden labels (analysis only).
        dedup: the dedup step's result (its count and pair sheet go in the report).
        finetuned: evaluation of LLP's network fine-tuned on the labels (a third row; none: two).

    Returns:
        markdown: the comparison table.
        html: table and plots in one page (PNGs inlined).
        report: report.md, report.html, metrics.json and the PNGs.
        summary: top-1 of both rows, LLP's gain and its pseudo-label precision.
        Output: the comparison table as Markdown text.
    """
    from components.llp_report.runner import run as write
    return write(baseline=baseline, llp=llp, model=model, test=test, oracle=oracle,
                 markdown=markdown, html=html, report=report, summary=summary, dedup=dedup,
                 finetuned=finetuned)
