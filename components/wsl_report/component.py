"""KFP component of the WSL report: the comparison table, the synsets audit, the linear probe
of the weak-pre-trained features and, when the tags were simulated, the banner saying so."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components import image


@dsl.component(base_image=image("evaluate"), install_kfp_package=False)
def wsl_report(baseline: Input[Metrics], finetuned: Input[Metrics], pretrained: Input[Model],
               synsets: Input[Dataset], labelled: Input[Dataset], test: Input[Dataset],
               markdown: Output[Markdown], html: Output[HTML], report: Output[Artifact],
               summary: Output[Metrics], plain: Input[Metrics] = None,
               semi_weak: Input[Metrics] = None, semi_weak_tags: Input[Metrics] = None,
               semi_weak_tags_random: Input[Metrics] = None,
               dedup: Input[Dataset] = None) -> str:
    """The comparison table of the supervised baseline, weak pre-training + fine-tuning and the
    teacher/student variants, with the synsets audit and the linear probe.

    Args:
        baseline: evaluation of the supervised baseline (labels only).
        finetuned: evaluation of the weak-pre-trained network fine-tuned on the labels.
        pretrained: the weak-train step's model (the linear probe of its frozen features).
        synsets: the synsets step's result (summary.json: vocabulary, drops, candidates and
            whether the tags were simulated).
        labelled: the labelled split (the linear probe's training set).
        test: the test set (the probe's evaluation, class names).
        plain: evaluation of the fine-tuned student of the supervised teacher (optional row).
        semi_weak: evaluation of the fine-tuned student of the weak-pre-trained, fine-tuned
            teacher (optional row).
        semi_weak_tags: the same with the teacher's selection restricted to the images' tag
            candidates, ranked (optional row).
        semi_weak_tags_random: the same restricted to tag candidates and drawn at random per
            class: the paper's balanced-with-tags (optional row).
        dedup: the dedup step's result (its count goes in the report).

    Returns:
        markdown: the comparison table (under the SIMULATED banner when the tags were).
        html: table and plots in one page (PNGs inlined).
        report: report.md, report.html, metrics.json and the PNGs.
        summary: top-1 of every row, the gains over the baseline, the linear probe.
        Output: the comparison table as Markdown text.
    """
    from components.wsl_report.runner import run as write
    return write(baseline=baseline, finetuned=finetuned, pretrained=pretrained, synsets=synsets,
                 labelled=labelled, test=test, markdown=markdown, html=html, report=report,
                 summary=summary, plain=plain, semi_weak=semi_weak,
                 semi_weak_tags=semi_weak_tags, semi_weak_tags_random=semi_weak_tags_random,
                 dedup=dedup)
