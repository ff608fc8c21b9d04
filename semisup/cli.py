"""``semisup``: data import/split, single stages, the demo.

Every stage command takes ``--config FILE`` (YAML) and any number of
``--set key.path=value`` overrides, validated against the stage's typed config.
Bad input ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Callable

from semisup_core import config as cfglib
from semisup_core.errors import ConfigError, SemisupError

log = logging.getLogger("semisup")


#: stage name -> (config class, function) as "module:attribute"; each stage's module is imported
#: only when that stage runs or prints its help, so the CPU images (data, select) need no torch
_STAGES = {
    "import": ("semisup_core.data.config:ImportConfig", "semisup_core.data.stages:run_import"),
    "split": ("semisup_core.data.config:SplitConfig", "semisup_core.data.stages:run_split"),
    "materialise": ("semisup_core.data.config:MaterialiseConfig",
                    "semisup_core.data.stages:run_materialise"),
    "train": ("semisup_core.train:TrainConfig", "semisup_core.train:train"),
    "evaluate": ("semisup_core.evaluate:EvaluateConfig", "semisup_core.evaluate:evaluate"),
    "score": ("semisup_core.teacher_student.score:ScoreConfig", "semisup_core.teacher_student.score:score"),
    "select": ("semisup_core.teacher_student.select:SelectConfig", "semisup_core.teacher_student.select:select"),
    "embed": ("semisup_core.embed:EmbedConfig", "semisup_core.embed:embed"),
    "dedup": ("semisup_core.dedup.stage:DedupConfig", "semisup_core.dedup.stage:dedup"),
    "verify-pairs": ("semisup_core.dedup.verifier:VerifyPairsConfig",
                     "semisup_core.dedup.verifier:verify_pairs"),
    "teacher-student": ("semisup_core.teacher_student.run:TeacherStudentConfig",
                        "semisup_core.teacher_student.run:run_teacher_student"),
    "llp": ("semisup_core.train:TrainConfig", "semisup_core.llp.stage:train_llp"),
    "llp-run": ("semisup_core.llp.run:LLPRunConfig", "semisup_core.llp.run:run_llp"),
    "contrastive": ("semisup_core.train:TrainConfig", "semisup_core.simclr.stage:train_contrastive"),
    "distill": ("semisup_core.train:TrainConfig", "semisup_core.simclr.stage:train_distill"),
    "simclr-run": ("semisup_core.simclr.run:SimCLRRunConfig", "semisup_core.simclr.run:run_simclr"),
    "synsets": ("semisup_core.wsl.synsets:SynsetsConfig", "semisup_core.wsl.synsets:run_synsets"),
    "weak-train": ("semisup_core.train:TrainConfig", "semisup_core.wsl.stage:train_weak"),
    "wsl-run": ("semisup_core.wsl.run:WSLRunConfig", "semisup_core.wsl.run:run_wsl"),
    "pytorchjob": ("semisup.pytorchjob:JobSpec", "semisup.pytorchjob:launch"),
}
_DATA_STAGES = ("import", "split", "materialise")


def _stage(name: str) -> tuple[type, Callable]:
    """The config class and function of stage ``name`` (imports its module)."""
    refs = (ref.split(":") for ref in _STAGES[name])
    return tuple(getattr(importlib.import_module(mod), attr) for mod, attr in refs)


_HELP = {
    "import": "import a raw dataset (IDX files, image folder, tagged images, OpenClipart) "
              "into WebDataset shards",
    "split": "draw N labels per class; the rest (+ distractors) becomes the unlabelled pool",
    "materialise": "copy a manifest's selected images into a training set (parallel workers)",
    "train": "train one model (one process, or DDP under torchrun)",
    "evaluate": "top-1/top-5, per-class recall and confusion matrix of a model on a dataset",
    "score": "teacher scores the unlabelled pool: top-P classes per image, partial top-K per class",
    "select": "merge scores into the ranked manifest (balanced/unbalanced/random/threshold)",
    "embed": "L2-normalised embeddings of every image of a dataset (float16 tables per shard)",
    "dedup": "remove the pool's near-duplicates of evaluation images (pairs, manifest, sheet)",
    "verify-pairs": "training pairs of dedup's copy verifier (a pool image and an edit of it "
                    "or of a look-alike)",
    "teacher-student": "the whole Yalniz et al. pipeline in one process (variants as config)",
    "llp": "train with Local Label Propagation (the train stage, objective llp; DDP under torchrun)",
    "llp-run": "LLP end to end in one process: data, dedup, baseline, LLP, evaluate, report",
    "contrastive": "contrastive pre-training (the train stage, objective contrastive: SimCLR)",
    "distill": "distil a teacher into a student (the train stage, objective distill)",
    "simclr-run": "SimCLRv2 end to end in one process: pre-train, fine-tune, distil, report",
    "synsets": "tags -> WordNet synsets: audit table, vocabulary, soft targets, resampled set",
    "weak-train": "weak pre-training on tags (the train stage, objective weak: 1/k soft targets)",
    "wsl-run": "WSL end to end in one process: tags, synsets, weak pre-train, transfer, "
               "semi-weak teacher/student, report",
    "pytorchjob": "train on several nodes: create a PyTorchJob (Master + Workers), wait for it",
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config (path or URI)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="K=V",
                   help="override one field, e.g. --set optim.lr=0.05 (repeatable)")


class _StageParser(argparse.ArgumentParser):
    """A stage's parser; its epilog lists the config fields, read only when help is printed."""

    def format_help(self) -> str:
        cls = _stage(self.get_default("stage"))[0]
        self.epilog = ("config fields (set in --config or with --set):\n"
                       + "\n".join(cfglib.describe(cls)))
        return super().format_help()


def _stage_parser(sub, name: str, section: bool) -> None:
    p = sub.add_parser(name, help=_HELP[name], description=_HELP[name],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    if section:
        p.add_argument("--section", help="read this top-level section of the YAML file")
    p.set_defaults(func=_run_stage, stage=name)


def _which_stage(path: str, section: str | None, stage: str) -> str:
    """A hint for a config that does not validate as ``stage``'s: the other stage whose config
    it is, or the sections it holds."""
    try:
        data = cfglib.read_yaml(path)
    except SemisupError:
        return ""
    if section is None and data and all(isinstance(v, dict) for v in data.values()):
        return f" (the file holds sections {', '.join(sorted(data))}: pass --section NAME)"
    data = data.get(section) or {} if section else data
    for other in _STAGES:
        if other == stage or other == "pytorchjob":
            continue
        try:
            _stage(other)[0].model_validate(data)
        except Exception:  # noqa: BLE001 -- any failure means "not this stage's config either"
            continue
        return f" (it is a config of `semisup stage {other}`, not of `{stage}`)"
    return ""


def _run_stage(args) -> int:
    cls, fn = _stage(args.stage)
    section = getattr(args, "section", None)
    try:
        cfg = cfglib.load(cls, args.config, args.overrides, section)
    except ConfigError as err:
        hint = _which_stage(args.config, section, args.stage) if args.config else ""
        raise ConfigError(f"{err}{hint}") from None
    result = fn(cfg)
    if result is not None:
        print(json.dumps(_summary(result), indent=2, default=str))
    return 0


def _summary(result) -> object:
    if isinstance(result, dict):  # keep the printout short: drop bulky tables
        return {k: v for k, v in result.items()
                if k not in ("confusion_matrix", "history", "per_class_recall", "classes")}
    return result


def _run_models(args) -> int:
    from semisup_core.models import list_models, model_info

    for name in list_models():
        info = model_info(name)
        kind = "cpu-sized" if info.cpu_sized else "cluster"
        print(f"{name:<20} {info.input_size}px {info.in_chans}ch  {kind}")
    return 0


def _run_demo(args) -> int:
    if args.in_process:
        from semisup_core.teacher_student.demo import DemoConfig, run_demo

        run_demo(cfglib.load(DemoConfig, args.config, args.overrides))
        return 0
    from semisup.local_run import run_local

    run_local("teacher_student", args.config, args.overrides)
    return 0


def _run_pipeline(args) -> int:
    from semisup.local_run import run_local

    run_local(args.pipeline, args.config, args.overrides)
    return 0


def _run_submit(args) -> int:
    from semisup.kfp_remote import client_for, submit

    run_id = submit(client_for(args.host, args.namespace), args.pipeline, args.config,
                    args.overrides, experiment=args.experiment, run_name=args.run_name,
                    profile=args.profile)
    print(f"run {run_id}: {args.host.rstrip('/')}/#/runs/details/{run_id}")
    return 0


def _run_pipelines(args) -> int:
    from pipelines import PIPELINES, compile_pipeline, yaml_path
    from semisup.kfp_remote import client_for, sync, write_k8s_manifest
    from semisup.local_run import pipeline_module

    if args.pipelines_command == "compile":
        for name in sorted(PIPELINES):
            mod = pipeline_module(name)
            print(compile_pipeline(getattr(mod, mod.PIPELINE), yaml_path(mod.__file__)))
            print(write_k8s_manifest(name))
        return 0
    for name, what in sync(client_for(args.host, args.namespace)).items():
        print(f"{name}: {what}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semisup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="import and split datasets").add_subparsers(
        dest="data_command", required=True, parser_class=_StageParser)
    for name in _DATA_STAGES:
        _stage_parser(data, name, section=False)
    # every stage, the data ones included: what the stage images run (images/<stage>/Dockerfile)
    stage = sub.add_parser("stage", help="run one pipeline stage").add_subparsers(
        dest="stage_command", required=True, parser_class=_StageParser)
    for name in _STAGES:
        _stage_parser(stage, name, section=True)
    models = sub.add_parser("models", help="list registered models")
    models.set_defaults(func=_run_models)
    demo = sub.add_parser("demo", help="the main job on the embedded default: the teacher_student "
                          "pipeline through kfp.local (local files, no server)")
    _add_config_args(demo)
    demo.add_argument("--in-process", action="store_true",
                      help="run the same steps in this process (semisup_core only, no kfp)")
    demo.set_defaults(func=_run_demo)
    run = sub.add_parser("run", help="run a pipeline of pipelines/ locally through kfp.local")
    run.add_argument("pipeline", help="pipeline name, e.g. teacher_student")
    _add_config_args(run)
    run.set_defaults(func=_run_pipeline)
    submit = sub.add_parser("submit", help="start a pipeline run on a KFP cluster (kfp.Client)")
    submit.add_argument("pipeline", help="pipeline name, e.g. teacher_student")
    submit.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    submit.add_argument("--namespace", help="KFP namespace (multi-user installs)")
    submit.add_argument("--experiment", default="semisup", help="experiment name (created if absent)")
    submit.add_argument("--run-name", help="default: <pipeline>-seed<seed>")
    submit.add_argument("--profile", default="cpu", help="what each task requests: cpu (default) "
                        "gpu (one GPU per train/score/embed task, on the tainted GPU nodes) or "
                        "gpu-launcher (train tasks only wait on their PyTorchJob): "
                        "pipelines/resources.py; the amounts are run parameters (KFP UI)")
    _add_config_args(submit)
    submit.set_defaults(func=_run_submit)
    pipes = sub.add_parser("pipelines", help="compile pipelines; sync their versions to KFP")
    psub = pipes.add_subparsers(dest="pipelines_command", required=True)
    psub.add_parser("compile", help="rewrite pipelines/*.yaml and k8s/pipelines/*.yaml").set_defaults(
        func=_run_pipelines)
    psync = psub.add_parser("sync", help="upload each pipeline, and a new version only when its "
                            "compiled YAML changed (name: <pipeline>-<sha256[:10]>-<git commit>)")
    psync.add_argument("--host", required=True, help="KFP API endpoint")
    psync.add_argument("--namespace", help="KFP namespace (multi-user installs)")
    psync.set_defaults(func=_run_pipelines)
    return parser


def _one_line(err: Exception) -> str:
    """The error's own message: a DataLoader worker's error reaches this process as the same
    type with "Caught X in DataLoader worker process N" and the worker's traceback; its last
    line is the message."""
    text = str(err)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except SemisupError as err:
        print(f"semisup: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("semisup: interrupted", file=sys.stderr)
        return 130

