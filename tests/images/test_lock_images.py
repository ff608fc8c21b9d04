"""scripts/lock_images.py without the network: its refusals, and the pieces the locks are made of
(the resolution itself is checked against PyPI in test_resolve.py)."""

from __future__ import annotations

from tests.images.dockerfile import IMAGES_DIR, constraints_file, stage_images
from tests.images.lockscript import lock_images


def test_unknown_image_is_one_line_and_writes_nothing(capsys):
    before = {p: p.read_text() for p in IMAGES_DIR.glob("*/requirements.lock")}
    rc = lock_images.main(["score", "no-such-image"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no-such-image" in err[0], err
    assert {p: p.read_text() for p in IMAGES_DIR.glob("*/requirements.lock")} == before


def test_wrong_interpreter_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(lock_images, "IMAGE_PYTHON", (2, 7))
    assert lock_images.main(["--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CPython 2.7" in err[0], err


def test_constraints_follow_faiss_gpu():
    for image in stage_images():
        wants_gpu = "faiss-gpu-cu12" in lock_images.names(IMAGES_DIR / image / "requirements.txt")
        assert lock_images.constraints_for(image) == (lock_images.GPU_LOCK if wants_gpu
                                                      else lock_images.ROOT_LOCK)
        # and the committed lock says the same
        assert constraints_file(image) == lock_images.constraints_for(image), image


def test_hashes_are_stripped_for_resolution_only(tmp_path):
    lock = tmp_path / "build.lock"
    lock.write_text("# tools\npip==1.0 --hash=sha256:" + "a" * 64 + "\nwheel==2.0\n")
    copy = lock_images._unhashed(lock, tmp_path)
    assert copy != lock and copy.read_text() == "# tools\npip==1.0\nwheel==2.0\n"
    assert lock_images.exact_pins(lock) == {"pip": "1.0", "wheel": "2.0"}
    plain = tmp_path / "plain.lock"
    plain.write_text("pip==1.0\n")
    assert lock_images._unhashed(plain, tmp_path) == plain
