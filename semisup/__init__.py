"""The ``semisup`` command: a thin launcher over semisup_core (and, for pipelines, KFP)."""
