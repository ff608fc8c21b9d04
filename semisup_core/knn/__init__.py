"""FAISS kNN over L2-normalised embeddings, shared by dedup, LLP and SimCLR (see index.py)."""

from semisup_core.knn.index import (IndexSpec, build, empty_index, exact_search, load, merge, save,
                                    search)

__all__ = ["IndexSpec", "build", "empty_index", "exact_search", "load", "merge", "save", "search"]
