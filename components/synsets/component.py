"""KFP component of the synsets stage: tags -> WordNet synsets (the weak labels), with the
demo pool's SIMULATED tags drawn first when asked (its own image: NLTK and Debian's
wordnet-base, no torch)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import image


@dsl.component(base_image=image("synsets"), install_kfp_package=False)
def synsets(data: Input[Dataset], result: Output[Dataset], train: Output[Dataset],
            candidates: Output[Dataset], metrics: Output[Metrics], spec: dict = {},
            seed: int = 0, simulate_tags: bool = False, oracle: Input[Dataset] = None,
            noise_rate: float = 0.3, confusion_share: float = 0.5, own_weight: float = 0.7):
    """Canonicalise every tag to a WordNet 3.0 noun synset (Mahajan et al. 2018), choose the
    label vocabulary, write the per-image soft targets, the resampled weak training set and the
    target classes' tag candidates.

    Args:
        data: the tagged dataset (tags in each sample's JSON: an import with source tagged or
            openclipart), or with simulate_tags the demo's pool (a dedup step's deduplicated
            pool: its removed images are left out).
        spec: the stage's settings but data, out and seed (SynsetsConfig: vocabulary
            target|nouns|top, top_n, target_synsets, hyponym_max_rank, stop_tags, overrides,
            split_compounds, min_images, wordnet, draws, power, samples_per_shard); see
            `semisup stage synsets --help`. draws > 0 writes the resampled training set.
        seed: seed of the resampling and of the simulated tags.
        simulate_tags: first give every pool image SIMULATED tags from its hidden label
            (semisup_core/wsl/simulate.py; the demo only: the report says so).
        oracle: the pool's hidden labels; required with simulate_tags.
        noise_rate: simulated tags: share of tags replaced by noise.
        confusion_share: simulated tags: share of the noise drawn from another class's tags.
        own_weight: simulated tags: weight of a class's own synset lemmas against its
            hypernyms' (two levels up).

    Returns:
        result: mapping.parquet (the audit table: one row per raw tag), vocabulary.parquet,
            targets.parquet, candidates.parquet, summary.json; train/ (the resampled set) and,
            with simulate_tags, pool-tagged/ (the pool with its simulated tags).
        train: a reference to result/train, the weak pre-training's dataset ('' if draws is 0).
        candidates: a reference to result/candidates.parquet (key, class_id: the semi-weak
            selection's tag restriction; '' without target_synsets).
        metrics: vocabulary size, mapped tags, labelled images, candidate pairs, the simulated
            tags' measured noise.
    """
    from components.synsets.runner import run
    run(data=data, result=result, train=train, candidates=candidates, metrics=metrics,
        spec=spec, seed=seed, simulate_tags=simulate_tags, oracle=oracle, noise_rate=noise_rate,
        confusion_share=confusion_share, own_weight=own_weight)
