"""The lake core: LAKE_HOME folders, atomic writes that survive a crash, pseudonymization."""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import signal
import stat
import subprocess
import sys
import time

import polars as pl
import pytest

from dagster_project import pseudonym
from dagster_project.lake import LAKE_SUBDIRS, Lake, lake_home
from dagster_project.pseudonym import Pseudonymizer, load_secret
from dagster_project.quarantine import Reject, read_quarantine, write_quarantine


def test_lake_home_resolution_and_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_HOME", str(tmp_path / "somewhere"))
    assert lake_home() == (tmp_path / "somewhere").resolve()
    lake = Lake.at()
    for sub in LAKE_SUBDIRS:
        assert (lake.home / sub).is_dir()
    monkeypatch.delenv("LAKE_HOME")
    monkeypatch.chdir(tmp_path)
    assert lake_home() == (tmp_path / "lakehouse").resolve()


def test_write_table_replaces_and_keeps_history(lake):
    lake.write_table("clinical", pl.DataFrame({"patient_key": ["a"], "age": [50]}))
    time.sleep(0.01)
    lake.write_table(
        "clinical", pl.DataFrame({"patient_key": ["a"], "age": [51]}), keep_history=True
    )
    assert lake.read_table("clinical")["age"].to_list() == [51]
    (old,) = lake.history("clinical")
    assert pl.read_parquet(old)["age"].to_list() == [50]
    # history is outside the table's glob: readers of the table never see old rows
    assert [p.name for p in lake.table_files("clinical")] == ["clinical.parquet"]
    assert not list(lake.tmp_dir.iterdir())
    assert not [p for p in (lake.home / "staging").iterdir() if p.name != "checkpoints"]


def test_write_part_union_and_bad_names(lake):
    lake.write_part("quarantine", "imaging", pl.DataFrame({"x": [1]}))
    lake.write_part("quarantine", "clinical", pl.DataFrame({"x": [2, 3]}))
    assert sorted(lake.read_table("quarantine")["x"].to_list()) == [1, 2, 3]
    with pytest.raises(ValueError, match="snake_case"):
        lake.write_table("Bad-Name", pl.DataFrame({"x": [1]}))
    with pytest.raises(ValueError, match="part name"):
        lake.write_part("quarantine", "../escape", pl.DataFrame({"x": [1]}))


WRITER = """
import sys, numpy as np, polars as pl
from dagster_project.lake import Lake
lake = Lake.at(sys.argv[1])
rng = np.random.default_rng(0)
frame = pl.DataFrame({f"c{i}": rng.random(3_000_000) for i in range(12)})
print("writing", flush=True)
lake.write_table("big", frame)
print("finished", flush=True)
"""


def test_killed_writer_leaves_previous_version_readable(lake):
    """SIGKILL in the middle of a write: the old table stays intact and visible, nothing torn."""
    lake.write_table("big", pl.DataFrame({"c0": [1.0, 2.0]}))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(lake.home)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    assert proc.stdout.readline().strip() == "writing"
    deadline = time.time() + 60
    staged = lake.home / "staging"
    while not list(staged.glob("*/big/*")) and time.time() < deadline:
        time.sleep(0.005)
    assert list(staged.glob("*/big/*")), "the writer never started its staged file"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert lake.read_table("big")["c0"].to_list() == [1.0, 2.0]
    assert [p.name for p in lake.table_files("big")] == ["big.parquet"]


def test_pseudonymizer_is_keyed_and_stable(tmp_path, monkeypatch):
    monkeypatch.delenv("LAKE_PSEUDONYM_KEY", raising=False)
    monkeypatch.setenv("RADLAKE_CONFIG_DIR", str(tmp_path / "config"))
    home = tmp_path / "lake"
    secret = load_secret(home)
    key_file = pseudonym.key_file(home)
    assert key_file.parent == tmp_path / "config" / "keys"  # outside LAKE_HOME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_secret(home) == secret  # generated once, then reused
    keyer = Pseudonymizer(secret)
    key = keyer("C1", "GZ2019-004711")
    assert len(key) == 32 and int(key, 16) >= 0
    # the documented definition: HMAC-SHA256(secret, "<center>\x1f<id>"), first 32 hex digits
    expected = hmac.new(secret, b"C1\x1fGZ2019-004711", hashlib.sha256).hexdigest()
    assert key == expected[:32]
    assert pickle.loads(pickle.dumps(keyer))("C1", "GZ2019-004711") == key  # as workers get it
    assert keyer("C1", " GZ2019-004711 ") == key
    assert keyer("C2", "GZ2019-004711") != key  # same hospital id, other center
    assert Pseudonymizer(b"another secret")("C1", "GZ2019-004711") != key
    assert keyer("C1", 123.0) == keyer("C1", "123")  # Excel turns ids into floats
    assert "GZ2019" not in repr(keyer)
    with pytest.raises(ValueError):
        keyer("C1", "  ")
    monkeypatch.setenv("LAKE_PSEUDONYM_KEY", "from-env")
    assert load_secret(tmp_path / "other-lake") == b"from-env"


def test_key_custody_fingerprint_refuses_another_key(tmp_path, monkeypatch):
    """The key lives outside LAKE_HOME, the lake keeps only its fingerprint, and another key stops
    the lake instead of silently giving every patient a new key."""
    monkeypatch.delenv("LAKE_PSEUDONYM_KEY", raising=False)
    monkeypatch.setenv("RADLAKE_CONFIG_DIR", str(tmp_path / "config"))
    home = tmp_path / "lake"
    secret = load_secret(home)
    recorded = (home / pseudonym.FINGERPRINT_FILE).read_text().strip()
    # the fingerprint is an HMAC of a fixed label under the key: it does not contain the key
    assert (
        recorded == hmac.new(secret, pseudonym.FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]
    )
    assert secret not in b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    monkeypatch.setenv("LAKE_PSEUDONYM_KEY", "a-different-key")
    with pytest.raises(pseudonym.PseudonymKeyMismatch, match="radlake key rotate"):
        load_secret(home)
    monkeypatch.delenv("LAKE_PSEUDONYM_KEY")
    pseudonym.key_file(home).unlink()  # a lost key file: a new one is generated, and refused
    with pytest.raises(pseudonym.PseudonymKeyMismatch):
        load_secret(home)


def test_legacy_key_inside_lake_home_is_moved_out(tmp_path, monkeypatch):
    monkeypatch.delenv("LAKE_PSEUDONYM_KEY", raising=False)
    monkeypatch.setenv("RADLAKE_CONFIG_DIR", str(tmp_path / "config"))
    home = tmp_path / "lake"
    home.mkdir()
    (home / pseudonym.LEGACY_KEY_FILE).write_bytes(b"wave-one-secret\n")
    assert load_secret(home) == b"wave-one-secret"  # the same patient keys as before
    assert not (home / pseudonym.LEGACY_KEY_FILE).exists()
    assert pseudonym.key_file(home).read_bytes() == b"wave-one-secret"


def test_quarantine_parts_are_replaced_per_source(lake):
    write_quarantine(
        lake,
        "clinical",
        [Reject("clinical/a.csv", "clinical", "missing_id", "row 3 has no patient_id", "row 3")],
    )
    write_quarantine(
        lake,
        "grants",
        [Reject("portfolio/grants/g.csv", "grants", "negative_amount", "amount -5 < 0", "row 2")]
        * 2,
    )
    assert read_quarantine(lake).height == 3
    write_quarantine(lake, "clinical", [])
    assert read_quarantine(lake, "clinical").height == 0
    assert read_quarantine(lake, "grants")["rule"].to_list() == ["negative_amount"] * 2
