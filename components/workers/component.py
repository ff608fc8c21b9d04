"""KFP component that turns a worker count into the items of a ParallelFor."""

from typing import List

from kfp import dsl

from components import image


@dsl.component(base_image=image("score"), install_kfp_package=False)
def worker_indices(n: int) -> List[int]:
    """The indices 0..n-1, one per parallel scoring task.

    Args:
        n: number of workers (>= 1).

    Returns:
        [0, 1, ..., n-1].
    """
    if n < 1:
        raise ValueError(f"score_workers must be >= 1, got {n}")
    return list(range(n))


@dsl.component(base_image=image("score"), install_kfp_package=False)
def joined(done: List[str]) -> int:
    """A fan-in: waits for every task of a ParallelFor (their collected outputs).

    Args:
        done: the collected outputs of the loop's tasks.

    Returns:
        How many finished.
    """
    return len(done)
