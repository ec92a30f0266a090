"""Model manifest: the shipped defaults resolve and verify; user entries fail loudly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from voice_agent.errors import ModelError
from voice_agent.models import DEFAULT_MANIFEST, ROLES, Manifest, sha256_file


def write_manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.toml"
    path.write_text(text, encoding="utf-8")
    return path


def model_error(manifest: Manifest, role: str, name: str) -> ModelError:
    with pytest.raises(ModelError) as info:
        manifest.resolve(role, name)  # type: ignore[arg-type]
    assert info.value.code == "model_unavailable"
    return info.value


@pytest.fixture
def user_model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF not really a model" * 100)
    return path


def test_shipped_manifest_resolves_the_embedded_defaults() -> None:
    assert DEFAULT_MANIFEST.is_file()
    manifest = Manifest.load()
    for role in ROLES:
        entry = manifest.find(role, "default")
        assert entry is not None, f"no default {role} model"
        assert entry.embedded
        resolved = manifest.resolve(role, "default")
        assert resolved.verified, f"{role}: checksum not verified"
        assert resolved.name == entry.name
        assert Path(resolved.path).exists()
        if resolved.config_path is not None:
            assert Path(resolved.config_path).is_file()
    tts = manifest.resolve("tts", "default")
    assert tts.path.endswith(".onnx")
    assert tts.config_path is not None and tts.config_path.endswith(".onnx.json")


def test_default_is_also_found_by_name() -> None:
    manifest = Manifest.load()
    entry = manifest.find("llm", "default")
    assert entry is not None
    assert manifest.find("llm", entry.name) == entry
    assert manifest.find("asr", entry.name) is None


def test_user_model_with_the_right_checksum_is_verified(tmp_path: Path, user_model: Path) -> None:
    digest = hashlib.sha256(user_model.read_bytes()).hexdigest()
    manifest = Manifest.load(write_manifest(tmp_path, f"""
[llm.tiny]
path = "{user_model.name}"
sha256 = "{digest.upper()}"
"""))
    resolved = manifest.resolve("llm", "tiny")
    assert resolved.verified
    assert resolved.path == str(user_model)
    assert not manifest.resolve("llm", "tiny", verify=False).verified
    # Layered on the shipped manifest: the embedded default stays the default.
    default = manifest.find("llm", "default")
    assert default is not None and default.embedded


def test_shipped_manifest_is_package_data() -> None:
    import voice_agent

    package_dir = Path(voice_agent.__file__).resolve().parent
    assert DEFAULT_MANIFEST.is_relative_to(package_dir)
    assert DEFAULT_MANIFEST.is_file()


def test_user_default_replaces_the_embedded_default(tmp_path: Path, user_model: Path) -> None:
    shipped = Manifest.load()
    embedded = shipped.find("llm", "default")
    assert embedded is not None
    manifest = Manifest.load(write_manifest(tmp_path, f"""
[llm.tiny]
path = "{user_model.name}"
default = true
"""))
    assert manifest.resolve("llm", "default").path == str(user_model)
    # The embedded model is still there by name, no longer the default (doctor would
    # otherwise call a broken embedded package fatal although nothing uses it).
    still = manifest.find("llm", embedded.name)
    assert still is not None and not still.default
    assert manifest.find("asr", "default") == shipped.find("asr", "default")


def test_user_entry_with_a_shipped_name_replaces_it(tmp_path: Path, user_model: Path) -> None:
    embedded = Manifest.load().find("tts", "default")
    assert embedded is not None
    manifest = Manifest.load(write_manifest(tmp_path, f"""
[tts.{embedded.name}]
path = "{user_model.name}"
"""))
    entries = [e for e in manifest.entries if (e.role, e.name) == ("tts", embedded.name)]
    assert len(entries) == 1 and not entries[0].embedded
    assert manifest.find("tts", embedded.name) == entries[0]
    assert manifest.find("tts", "default") is None  # the replacement did not say default
    with pytest.raises(ModelError, match="no default tts model"):
        manifest.resolve("tts", "default")


def test_wrong_checksum_names_the_file(tmp_path: Path, user_model: Path) -> None:
    manifest = Manifest.load(write_manifest(tmp_path, f"""
[llm.tiny]
path = "{user_model.name}"
sha256 = "{"0" * 64}"
"""))
    error = model_error(manifest, "llm", "tiny")
    assert str(user_model) in error.message
    assert "checksum" in error.message


def test_missing_file_names_it(tmp_path: Path) -> None:
    manifest = Manifest.load(write_manifest(tmp_path, """
[llm.absent]
path = "models/absent.gguf"
sha256 = "00"
"""))
    error = model_error(manifest, "llm", "absent")
    assert str(tmp_path / "models" / "absent.gguf") in error.message


def test_missing_side_file_names_it(tmp_path: Path, user_model: Path) -> None:
    manifest = Manifest.load(write_manifest(tmp_path, f"""
[tts.voice]
path = "{user_model.name}"
config = "voice.onnx.json"
"""))
    error = model_error(manifest, "tts", "voice")
    assert "voice.onnx.json" in error.message


def test_directory_model_is_checked_through_its_checksum_file(tmp_path: Path) -> None:
    folder = tmp_path / "whisper"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"weights")
    text = """
[asr.whisper]
path = "whisper"
checksum_file = "model.bin"
sha256 = "{digest}"
"""
    good = hashlib.sha256(b"weights").hexdigest()
    manifest = Manifest.load(write_manifest(tmp_path, text.format(digest=good)))
    assert manifest.resolve("asr", "whisper").verified
    manifest = Manifest.load(write_manifest(tmp_path, text.format(digest="1" * 64)))
    error = model_error(manifest, "asr", "whisper")
    assert str(folder / "model.bin") in error.message


def test_directory_option_is_the_base_of_relative_paths(tmp_path: Path, user_model: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    manifest_path = write_manifest(elsewhere, f'[llm.tiny]\npath = "{user_model.name}"\n')
    with pytest.raises(ModelError):
        Manifest.load(manifest_path).resolve("llm", "tiny")
    resolved = Manifest.load(manifest_path, directory=tmp_path).resolve("llm", "tiny")
    assert resolved.path == str(user_model)
    assert not resolved.verified  # no sha256 given: nothing to verify


def test_unknown_package_is_a_model_error(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, """
[llm.ghost]
package = "no_such_model_package_xyz"
path = "model.gguf"
""")
    with pytest.raises(ModelError) as info:
        Manifest.load(path)
    assert "no_such_model_package_xyz" in info.value.message
    assert "no-such-model-package-xyz" in info.value.message  # the pip name to install


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[vision.x]\npath = "x"\n', "vision"),
        ("[llm.x]\nsha256 = \"00\"\n", "needs a path"),
        ("[llm.x\n", "not valid TOML"),
        ('[llm]\nx = "y"\n', "not a table"),
    ],
)
def test_malformed_manifest(tmp_path: Path, text: str, fragment: str) -> None:
    path = write_manifest(tmp_path, text)
    with pytest.raises(ModelError) as info:
        Manifest.load(path)
    assert fragment in info.value.message


def test_missing_manifest_names_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"absent\.toml"):
        Manifest.load(tmp_path / "absent.toml")


def test_a_path_instead_of_a_name(tmp_path: Path, user_model: Path) -> None:
    manifest = Manifest.load(write_manifest(tmp_path, ""))
    assert manifest.entries == Manifest.load().entries  # an empty user manifest adds nothing
    resolved = manifest.resolve("llm", str(user_model))
    assert resolved.path == str(user_model)
    assert resolved.name == user_model.name
    assert not resolved.verified
    error = model_error(manifest, "llm", str(tmp_path / "nope.gguf"))
    assert "nope.gguf" in error.message


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"abc" * 1000)
    assert sha256_file(path, chunk_bytes=7) == hashlib.sha256(b"abc" * 1000).hexdigest()
    with pytest.raises(ModelError):
        sha256_file(tmp_path)
