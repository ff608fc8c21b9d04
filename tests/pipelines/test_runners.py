"""Component runners without KFP: artifacts are plain objects with path/uri/metadata."""

import types

import pytest

from components.artifacts import dataset_uri
from components.data.runner import import_data, split_data
from semisup_core.errors import ConfigError


def _artifact(path) -> types.SimpleNamespace:
    return types.SimpleNamespace(path=str(path), uri=str(path), metadata={})


def test_import_is_skipped_when_done_and_refused_when_different(tmp_path, tiny_raw):
    root = str(tmp_path / "data")
    first = _artifact(tmp_path / "a1")
    uri = import_data("fashion-mnist", tiny_raw["fashion_mnist"], root, "train", "train", first)
    assert dataset_uri(first) == uri and first.metadata["uri"] == uri
    again = _artifact(tmp_path / "a2")
    import_data("fashion-mnist", tiny_raw["fashion_mnist"] + "/", root, "train", "train", again)
    assert dataset_uri(again) == uri  # same content (path spelled differently): reused
    with pytest.raises(ConfigError, match="another split"):
        import_data("fashion-mnist", tiny_raw["fashion_mnist"], root, "train", "test",
                    _artifact(tmp_path / "a3"))
    off = _artifact(tmp_path / "a4")
    assert import_data("mnist", "", root, "mnist", "train", off) == "" and dataset_uri(off) == ""


def test_split_refers_to_shared_data(tmp_path, tiny_raw):
    root = str(tmp_path / "data")
    train = _artifact(tmp_path / "t")
    import_data("fashion-mnist", tiny_raw["fashion_mnist"], root, "train", "train", train)
    none = _artifact(tmp_path / "none")
    import_data("mnist", "", root, "mnist", "train", none)
    outs = [_artifact(tmp_path / n) for n in ("l", "p", "o")]
    labelled, pool, oracle = split_data(train, root, 5, 0, none, *outs)
    assert labelled.endswith("split-n5-s0-nodistract/labelled")
    assert [dataset_uri(a) for a in outs] == [labelled, pool, oracle]


def test_score_runner_hands_the_decoder_to_the_stage(tmp_path):
    """The component's decoder reaches ScoreConfig: a typo is the stage's one-line error."""
    from components.score.runner import run as score_run
    art = _artifact(tmp_path / "x")
    with pytest.raises(ConfigError, match="decoder"):
        score_run(teacher=art, pool=art, scores=art, top_p=1, partial_k=10, use_logits=False,
                  worker=0, num_workers=1, batch_size=8, decoder="jpeg", decode_threads=2)


def test_a_reference_to_nothing_is_no_init_model(tmp_path, tiny_raw):
    """teacher_student's teacher_init reaches the train runner through the reference component:
    a reference to '' trains from scratch, a reference to a model directory fine-tunes from it
    (in its architecture: the semi-weak teacher from a weak-pre-trained model)."""
    from components.reference.runner import run as reference
    from components.train.runner import run as train
    root = str(tmp_path / "data")
    raw = _artifact(tmp_path / "raw")
    import_data("fashion-mnist", tiny_raw["fashion_mnist"], root, "train", "train", raw)
    none = _artifact(tmp_path / "none")
    import_data("mnist", "", root, "mnist", "train", none)
    labelled, pool, oracle = (_artifact(tmp_path / n) for n in ("l", "p", "o"))
    split_data(raw, root, 5, 0, none, labelled, pool, oracle)
    recipe = {"model": "small_resnet8", "model_kwargs": {"width": 4}, "epochs": 1,
              "batch_size": 10, "threads": 1}
    empty, first = _artifact(tmp_path / "ref-empty"), _artifact(tmp_path / "m1")
    assert reference("", empty) == ""
    train(data=labelled, recipe=recipe, model=first, init_from=empty)
    assert first.metadata["fine_tuned"] is False
    ref, second = _artifact(tmp_path / "ref-model"), _artifact(tmp_path / "m2")
    reference(str(tmp_path / "m1"), ref)
    train(data=labelled, recipe=dict(recipe, model_kwargs={"width": 8}), model=second,
          init_from=ref)
    assert second.metadata["fine_tuned"] is True
    assert second.metadata["model_kwargs"] == {"width": 4}  # the init model's architecture


def test_materialise_tasks_write_selects_output_like_one_process(tmp_path, teacher, pool,
                                                                monkeypatch):
    """The materialise component: two tasks write into the select step's ``selected`` output
    (the second to finish writes dataset.json), the same samples as select materialising in
    its own task; a rerun is skipped; an artifact on the store without the store's
    credentials in the task is one line."""
    from components.data.runner import materialise
    from components.select.runner import run as select_run
    from semisup_core.data.dataset import iter_dataset
    from semisup_core.teacher_student.score import ScoreConfig, score
    scores = str(tmp_path / "scores")
    score(ScoreConfig(model=teacher, pool=pool, out=scores, top_p=2, partial_k=30,
                      batch_size=16, decoder="pil", decode_workers=0))
    metrics = types.SimpleNamespace(path=str(tmp_path / "m"), uri=str(tmp_path / "m"),
                                    metadata={}, log_metric=lambda *a: None)
    one, parts = _artifact(tmp_path / "one"), _artifact(tmp_path / "parts")
    for sel, materialise_here in ((one, True), (parts, False)):
        select_run(scores=[_artifact(scores)], pool=_artifact(pool),
                   manifest=_artifact(str(sel.path) + "-manifest"), selected=sel,
                   metrics=metrics, strategy="balanced", k=10, k_law="frequency",
                   threshold=0.5, seed=0, materialise=materialise_here)
    manifest = _artifact(str(parts.path) + "-manifest")
    done = [materialise(manifest, _artifact(pool), parts, w, 2, 8) for w in (0, 1)]
    assert done[1].endswith("dataset.json written")
    assert materialise(manifest, _artifact(pool), parts, 0, 2, 8).endswith("done before")
    samples = lambda a: sorted((s.key, s.cls) for s in iter_dataset(a.path))  # noqa: E731
    assert samples(parts) == samples(one) and len(samples(one)) > 0
    for var in ("S3_ENDPOINT", "MINIO_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    remote = types.SimpleNamespace(path=str(tmp_path / "r"), uri="minio://mlpipeline/x/selected",
                                   metadata={})
    with pytest.raises(ConfigError, match="needs the store's endpoint and credentials"):
        materialise(manifest, _artifact(pool), remote, 0, 2, 8)
