"""What the embed component runs: one worker's share of semisup_core.embed."""

from __future__ import annotations

from semisup_core import config, storage
from semisup_core.embed import EmbedConfig, embed

from components.artifacts import dataset_uri, location


def run(dataset, embeddings, enabled: bool = True, **params) -> dict:
    """Embed shards ``worker::num_workers`` of ``dataset`` into the ``embeddings`` artifact."""
    if not enabled:
        storage.write_json(storage.join(location(embeddings), "disabled.json"), {"enabled": False})
        return {"enabled": False}
    cfg = config.build(EmbedConfig, {"dataset": dataset_uri(dataset), "out": location(embeddings),
                                     **params}, "embed component")
    summary = embed(cfg)
    embeddings.metadata.update(dim=summary["dim"], images=summary["images"], model=cfg.model)
    return summary
