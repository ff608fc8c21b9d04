"""KFP component of the embed stage: one worker's share of a dataset's embeddings."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import image


@dsl.component(base_image=image("embed"), install_kfp_package=False)
def embed(dataset: Input[Dataset], embeddings: Output[Dataset], model: str = "pixels",
          image_size: int = 224, pixels_side: int = 14, blur_sigma: float = 1.0,
          batch_size: int = 256, decoder: str = "auto", decode_threads: int = 2,
          worker: int = 0, num_workers: int = 1, enabled: bool = True):
    """L2-normalised float16 embeddings of every image, one table per shard.

    Args:
        dataset: the images.
        model: pixels (near-duplicate descriptor of small images), efficientnet_lite0 (ImageNet
            network shipped by a package) or a model directory URI (its penultimate layer).
        image_size: efficientnet_lite0's input side.
        pixels_side: pixels: side of the downsampled image.
        blur_sigma: pixels: Gaussian blur before the downsample.
        batch_size: inference batch.
        decoder: auto (DALI if installed, else PIL), dali or pil.
        decode_threads: DALI CPU decoding threads.
        worker: this worker's index; it embeds shards worker, worker+num_workers, ...
        num_workers: how many workers share the dataset.
        enabled: false writes nothing (the pipeline's dedup switch).

    Returns:
        embeddings: shards/<shard>.parquet (key, shard, vector) with done markers, embedding.json.
    """
    from components.embed.runner import run
    run(dataset=dataset, embeddings=embeddings, model=model, image_size=image_size,
        pixels_side=pixels_side, blur_sigma=blur_sigma, batch_size=batch_size, decoder=decoder,
        decode_threads=decode_threads, worker=worker, num_workers=num_workers, enabled=enabled)
