"""Pseudonymization: the one function every ingest uses to turn a hospital patient id into patient_key.

patient_key = HMAC-SHA256(secret, "<center_id>\\x1f<patient_id>") as hex (first 32 chars).
The secret comes from LAKE_PSEUDONYM_KEY, or is generated once into LAKE_HOME/.pseudonym_key with
0600 rights. The same (center, id) always gives the same key within one lake; without the secret a
key cannot be reversed or recomputed from a guessed id.
"""

from __future__ import annotations

import hashlib
import hmac
import os

TYPE_CHECKING = False  # pathlib stays unimported in the scan's header workers
if TYPE_CHECKING:
    from pathlib import Path

KEY_FILE = ".pseudonym_key"
KEY_LENGTH = 32


def load_secret(home: Path) -> bytes:
    """The pseudonymization secret: LAKE_PSEUDONYM_KEY, else the lake's key file (created once)."""
    env = os.environ.get("LAKE_PSEUDONYM_KEY")
    if env:
        return env.encode("utf-8")
    import secrets
    from pathlib import Path

    path = Path(home) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode("ascii"))
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
    os.chmod(path, 0o600)
    return path.read_bytes().strip()


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
