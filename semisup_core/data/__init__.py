"""Datasets: IDX/image-folder import, WebDataset shards, labelled/unlabelled split, DALI reading."""
