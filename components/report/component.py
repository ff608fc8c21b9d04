"""KFP component that writes the teacher/student report (Markdown, HTML, PNGs)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from components import image


@dsl.component(base_image=image("evaluate"), install_kfp_package=False)
def report(baseline: Input[Metrics], teacher: Input[Metrics], pretrained: Input[Metrics],
           student: Input[Metrics], sweep: Input[Metrics], manifest: Input[Dataset],
           test: Input[Dataset], pool: Input[Dataset], markdown: Output[Markdown],
           html: Output[HTML], report: Output[Artifact], summary: Output[Metrics],
           oracle: Input[Dataset] = None, self_training: Input[Metrics] = None,
           dedup: Input[Dataset] = None) -> str:
    """The comparison table, plots and contact sheet of one teacher/student run.

    Args:
        baseline: evaluation of the supervised baseline (student architecture, labels only).
        teacher: evaluation of the teacher.
        pretrained: evaluation of the student before fine-tuning.
        student: evaluation of the fine-tuned student.
        sweep: the gathered evaluations of the K sweep's fine-tuned students (accuracy vs K).
        manifest: the ranked manifest of round 1 (for the contact sheet).
        test: the test set (class names).
        pool: the unlabelled pool (images of the contact sheet).
        oracle: the pool's hidden labels; frames the contact sheet green/red (optional).
        self_training: evaluation of the self-training student, when that variant ran.
        dedup: the dedup step's result (its count and pair sheet go in the report).

    Returns:
        markdown: the comparison table.
        html: table and plots in one page (PNGs inlined).
        report: report.md, report.html, metrics.json and the PNGs.
        summary: top-1 of every row and the student's gain over the baseline.
        Output: the comparison table as Markdown text.
    """
    from components.report.runner import run
    rows = {"supervised baseline": baseline, "teacher": teacher,
            "student, pre-trained only": pretrained, "student, fine-tuned": student,
            "self-training, fine-tuned": self_training}
    return run(rows=rows, sweep=sweep, manifest=manifest, test=test, pool=pool, oracle=oracle,
               markdown=markdown, html=html, report=report, summary=summary, dedup=dedup)
