"""semisup_core: the library behind semisup. Knows nothing of KFP or Kubernetes."""

__version__ = "0.1.0"
