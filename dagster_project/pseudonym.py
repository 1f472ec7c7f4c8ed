"""Pseudonymization: the one function every ingest uses to turn a hospital patient id into patient_key.

patient_key = HMAC-SHA256(secret, "<center_id>\x1f<patient_id>") as hex (first 32 chars). The same
(center, id) always gives the same key within one lake; without the secret a key cannot be
reversed or recomputed from a guessed id.

Key custody (the secret never lives in LAKE_HOME, so a copied or shared lake carries no key):
- the secret comes from ``LAKE_PSEUDONYM_KEY``, else from the lake's key file in the user's config
  folder, ``$RADLAKE_CONFIG_DIR`` or ``$XDG_CONFIG_HOME/radlake`` or ``~/.config/radlake``, as
  ``keys/<lake id>.key`` (0600; generated once; the lake id is ``LAKE_HOME/lake_id``);
- a lake made before key custody (``LAKE_HOME/.pseudonym_key``) has that file moved out, once;
- the lake keeps only a fingerprint of the secret (``LAKE_HOME/pseudonym_key.fingerprint``, an
  HMAC of a fixed label: it reveals nothing of the key). A run whose secret has another
  fingerprint stops with ``PseudonymKeyMismatch`` instead of silently giving every patient a new
  key. ``radlake key rotate`` changes the key deliberately.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os

TYPE_CHECKING = False  # pathlib stays unimported in the scan's header workers
if TYPE_CHECKING:
    from pathlib import Path

LEGACY_KEY_FILE = ".pseudonym_key"  # wave-1 lakes kept the key inside LAKE_HOME
LAKE_ID_FILE = "lake_id"
FINGERPRINT_FILE = "pseudonym_key.fingerprint"
FINGERPRINT_LABEL = b"radlake pseudonym key fingerprint v1"
KEY_LENGTH = 32


class PseudonymKeyMismatch(RuntimeError):
    """The secret at hand is not the one this lake's patient keys were made with."""


def config_dir() -> Path:
    """The user's radlake config folder (keys live here, never in LAKE_HOME)."""
    from pathlib import Path

    if os.environ.get("RADLAKE_CONFIG_DIR"):
        return Path(os.environ["RADLAKE_CONFIG_DIR"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path("~/.config").expanduser()
    return Path(base) / "radlake"


def lake_id(home: Path) -> str:
    """The lake's random id (``LAKE_HOME/lake_id``, created once): names its key file."""
    import uuid
    from pathlib import Path

    path = Path(home) / LAKE_ID_FILE
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process was first: use its id
            _write_new(path, uuid.uuid4().hex.encode("ascii"), 0o644)
    return path.read_text(encoding="ascii").strip()


def key_file(home: Path) -> Path:
    return config_dir() / "keys" / f"{lake_id(home)}.key"


def key_source(home: Path) -> str:
    """Where the secret comes from, in words (never the secret)."""
    if os.environ.get("LAKE_PSEUDONYM_KEY"):
        return "the LAKE_PSEUDONYM_KEY environment variable"
    return f"the key file {key_file(home)}"


def fingerprint(secret: bytes) -> str:
    return hmac.new(secret, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data``, atomically and only once: written to a temporary file, then
    hard-linked into place (``FileExistsError`` when another process was first)."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.link(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)


def _file_secret(home: Path) -> bytes:
    """The lake's key file in the config folder; moved out of a legacy lake, else generated."""
    import logging
    import secrets
    from pathlib import Path

    path = key_file(home)
    legacy = Path(home) / LEGACY_KEY_FILE
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process was first: use its key
            if legacy.exists():
                _write_new(path, legacy.read_bytes().strip(), 0o600)
                logging.getLogger(__name__).warning(
                    "pseudonymization key moved out of LAKE_HOME to %s: back it up", path
                )
            else:
                _write_new(path, secrets.token_hex(32).encode("ascii"), 0o600)
    if legacy.exists() and path.read_bytes().strip() == legacy.read_bytes().strip():
        legacy.unlink()
    os.chmod(path, 0o600)
    return path.read_bytes().strip()


def load_secret(home: Path) -> bytes:
    """The lake's pseudonymization secret, checked against the lake's fingerprint (the first use
    records it). Raises ``PseudonymKeyMismatch`` when the secret is not the lake's."""
    from pathlib import Path

    env = os.environ.get("LAKE_PSEUDONYM_KEY")
    secret = env.encode("utf-8") if env else _file_secret(home)
    recorded = Path(home) / FINGERPRINT_FILE
    mine = fingerprint(secret)
    if not recorded.exists():
        with contextlib.suppress(FileExistsError):  # another process was first: compare with it
            _write_new(recorded, f"{mine}\n".encode("ascii"), 0o644)
    theirs = recorded.read_text(encoding="ascii").strip()
    if theirs != mine:
        raise PseudonymKeyMismatch(
            f"the pseudonymization key from {key_source(home)} (fingerprint {mine}) is not the "
            f"key of the lake {home} (fingerprint {theirs}, in {recorded.name}): every patient "
            "would get a new patient_key. Restore the lake's key (LAKE_PSEUDONYM_KEY, or its "
            "key file from your backup), or change it deliberately with `radlake key rotate`."
        )
    return secret


def normalize_patient_id(patient_id: object) -> str:
    """Ids as hospitals write them: strip blanks; '00123' stays '00123'; 123.0 from Excel becomes '123'."""
    if isinstance(patient_id, float) and patient_id.is_integer():
        patient_id = int(patient_id)
    return str(patient_id).strip()


class Pseudonymizer:
    """Callable ``(center_id, patient_id) -> patient_key``; holds the secret, never logs it."""

    def __init__(self, secret: bytes):
        if not secret:
            raise ValueError("empty pseudonymization secret")
        self._secret = secret
        self._keyed = None  # HMAC state after the key: copied per message (a third faster)

    def __getstate__(self) -> dict:  # pickled (to the scan's header workers) without _keyed
        return {"_secret": self._secret}

    def __setstate__(self, state: dict) -> None:
        self._secret = state["_secret"]
        self._keyed = None

    @classmethod
    def for_lake(cls, home: Path) -> Pseudonymizer:
        return cls(load_secret(home))

    def __call__(self, center_id: str, patient_id: object) -> str:
        center = str(center_id).strip()
        pid = normalize_patient_id(patient_id)
        if not center or not pid:
            raise ValueError("patient_key needs a non-empty center_id and patient_id")
        if self._keyed is None:
            self._keyed = hmac.new(self._secret, None, hashlib.sha256)
        mac = self._keyed.copy()
        mac.update(f"{center}\x1f{pid}".encode())
        return mac.hexdigest()[:KEY_LENGTH]

    def __repr__(self) -> str:  # never print the secret
        return "Pseudonymizer(<secret>)"
