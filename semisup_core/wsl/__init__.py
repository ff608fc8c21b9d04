"""Weakly supervised pre-training on tags (Mahajan et al. 2018) and the semi-weakly supervised
teacher/student (Yalniz et al. 2019 §3.3; docs/wsl.md).

``wordnet`` (WordNet 3.0 from Debian's wordnet-base through NLTK), ``synsets`` (tags ->
synsets, the vocabularies, targets, candidates: ``semisup stage synsets``), ``resample``
(square-root resampling), ``objective`` (the 1/k soft-target loss behind ``objective: weak``),
``simulate`` (the demo pool's SIMULATED tags). Import-free, like every method package.
"""
