"""File hash cache (``dagster_project.lake.HashCache``) on real files from ../shared/data.

Checked: the same digests as ``file_sha256``; a second pass over unchanged files reads none of them
(counters, and the process's own read counter in /proc); a same-size rewrite with its mtime put
back still misses (ctime); the cache file holds no path; a damaged cache file is ignored; and
``load_cases`` and the ``cases`` asset give the same table with the cache, hashing nothing again
on a re-run.

A file changed less than the cache's racy window before it is hashed is not remembered (see the
class doc), so the tests let freshly copied files age past a short window before the first pass.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import polars as pl
import pytest

from dagster_project.lake import HASH_CACHE_FILE, HashCache, file_sha256
from dagster_project.pseudonym import Pseudonymizer
from tests.conftest import shared_path

WINDOW_NS = 200_000_000  # a short racy window for tests
PATIENT = "PAT8775070DOE"  # a folder named after a patient, as landing/ may have
PSEUDONYMIZE = Pseudonymizer(b"test")


def let_age(window_ns: int = WINDOW_NS) -> None:
    """Wait until files written so far are older than the racy window."""
    time.sleep(window_ns / 1e9 + 0.1)


def copy(source: Path, dest: Path) -> Path:
    """A writable copy (the shared files are read-only)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, dest, copy_function=shutil.copyfile)
    else:
        shutil.copyfile(source, dest)
    return dest


def patient_files(root: Path) -> list[Path]:
    folder = root / "landing" / "imaging" / "C1" / PATIENT
    pyrad = shared_path("pyradiomics")
    return [
        copy(pyrad / "brain1_image.nrrd", folder / f"{PATIENT}_image.nrrd"),
        copy(pyrad / "brain1_label.nrrd", folder / f"{PATIENT}_label.nrrd"),
        copy(pyrad / "breast1_image.nrrd", folder / "breast.nrrd"),
    ]


def bytes_read() -> int | None:
    """Bytes this process has read through read() so far (Linux), else None."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    return int(next(line for line in text.splitlines() if line.startswith("rchar:")).split()[1])


def test_second_pass_reads_nothing_and_a_rewrite_misses(tmp_path):
    files = patient_files(tmp_path)
    let_age()
    expected = [file_sha256(f) for f in files]
    store = tmp_path / "state" / HASH_CACHE_FILE

    first = HashCache.load(store, racy_window_ns=WINDOW_NS)  # no file yet: empty, no error
    assert len(first) == 0 and first.load_error is None
    assert [first.sha256(f) for f in files] == expected
    assert (first.hits, first.misses) == (0, len(files))
    assert first.sha256(files[0]) == expected[0] and first.hits == 1  # same run: remembered
    first.save(store)
    assert store.stat().st_mode & 0o777 == 0o600

    second = HashCache.load(store, racy_window_ns=WINDOW_NS)
    read_before = bytes_read()
    digests = [second.sha256(f) for f in files]
    read_after = bytes_read()
    assert digests == expected
    assert (second.hits, second.misses) == (len(files), 0)
    if read_before is not None:  # the images are MBs; a pass over them only stats them
        assert read_after - read_before < min(f.stat().st_size for f in files)

    # rewrite one byte in place, same size, and put the mtime back: only ctime tells
    target = files[0]
    old = target.stat()
    with open(target, "r+b") as handle:
        handle.seek(old.st_size // 2)
        byte = handle.read(1)
        handle.seek(old.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    new = target.stat()
    assert (new.st_ino, new.st_size, new.st_mtime_ns) == (old.st_ino, old.st_size, old.st_mtime_ns)
    assert new.st_ctime_ns != old.st_ctime_ns
    changed = second.sha256(target)
    assert second.misses == 1
    assert changed == file_sha256(target) != expected[0]


def test_a_fresh_file_is_not_remembered_until_it_has_aged(tmp_path):
    """Within the racy window a second write could keep the identity (coarse timestamps)."""
    path = copy(shared_path("pyradiomics", "breast1_label.nrrd"), tmp_path / "fresh.nrrd")
    cache = HashCache()  # the default window (2 s)
    assert cache.sha256(path) == cache.sha256(path) == file_sha256(path)
    assert (cache.hits, cache.misses, len(cache)) == (0, 2, 0)


def saved_cache(tmp_path):
    """The patient files (aged past the racy window) and a cache file that knows them all."""
    files = patient_files(tmp_path)
    let_age()
    store = tmp_path / "state" / HASH_CACHE_FILE
    cache = HashCache(racy_window_ns=WINDOW_NS)
    for path in files:
        cache.sha256(path)
    cache.save(store)
    return files, store


def test_cache_file_holds_no_paths_and_drops_unused_entries(tmp_path):
    files, store = saved_cache(tmp_path)
    blob = store.read_bytes()
    for text in (PATIENT, "landing", "imaging", "nrrd", str(tmp_path)):
        assert text.encode() not in blob, text
    frame = pl.read_parquet(store)
    assert frame.columns == ["st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns", "sha256"]
    assert frame.height == len(files)
    assert sorted(bytes(d).hex() for d in frame["sha256"]) == sorted(file_sha256(f) for f in files)

    # a run that no longer sees a file forgets it on save
    again = HashCache.load(store, racy_window_ns=WINDOW_NS)
    again.sha256(files[0])
    again.save(store)
    assert pl.read_parquet(store).height == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_columns", "empty"])
def test_a_damaged_cache_file_is_ignored(tmp_path, damage):
    files, store = saved_cache(tmp_path)
    if damage == "garbage":
        store.write_bytes(b"\x00not a parquet file\xff" * 50)
    elif damage == "truncated":
        store.write_bytes(store.read_bytes()[: store.stat().st_size // 2])
    elif damage == "other_columns":
        pl.DataFrame({"path": [str(files[0])], "sha256": ["0" * 64]}).write_parquet(store)
    else:
        store.write_bytes(b"")

    cache = HashCache.load(store, racy_window_ns=WINDOW_NS)
    assert cache.load_error and len(cache) == 0
    assert [cache.sha256(f) for f in files] == [file_sha256(f) for f in files]
    assert cache.misses == len(files)
    cache.save(store)  # replaced by a good one
    healed = HashCache.load(store, racy_window_ns=WINDOW_NS)
    assert healed.load_error is None
    assert [healed.sha256(f) for f in files] == [file_sha256(f) for f in files]
    assert healed.misses == 0


def test_load_cases_with_the_cache_gives_the_same_table_and_rehashes_nothing(tmp_path):
    from assets.imaging.cases import load_cases
    from assets.imaging.dicom_scan import scan_imaging

    landing = tmp_path / "landing"
    center = landing / "imaging" / "C1"
    qin = shared_path("dicom", "autoradiomics", "QIN-PROSTATE-001")
    adc = copy(qin / "ADC", center / PATIENT / "ADC")  # a DICOM series: one hash per slice
    copy(qin / "seg", center / PATIENT / "seg")
    prostate = shared_path("dicom", "autoradiomics", "nifti", "prostate")
    copy(prostate / "img.nii.gz", center / "pr" / "img.nii.gz")
    copy(prostate / "seg_one_label.nii.gz", center / "pr" / "seg_one_label.nii.gz")
    copy(prostate / "seg_two_labels.nii.gz", center / "pr" / "seg_two_labels.nii.gz")
    (center / "cases.csv").write_text(
        "Image,Mask,Label,patient_id\n"
        f"{PATIENT}/ADC,{PATIENT}/seg/1-1.dcm,Lesion,\n"
        "pr/img.nii.gz,pr/seg_one_label.nii.gz,1,PR-1\n"
        "pr/img.nii.gz,pr/seg_two_labels.nii.gz,2,PR-1\n"
    )
    scan = scan_imaging(landing, PSEUDONYMIZE)
    let_age()

    plain = load_cases(landing, scan.series, PSEUDONYMIZE, scan_files=scan.files)
    assert plain.cases.height == 3 and not plain.rejects
    store = tmp_path / "state" / HASH_CACHE_FILE
    first_cache = HashCache.load(store, racy_window_ns=WINDOW_NS)
    first = load_cases(
        landing, scan.series, PSEUDONYMIZE, scan_files=scan.files, hashes=first_cache
    )
    assert first.cases.equals(plain.cases) and first.locators == plain.locators
    slices = len(list(adc.iterdir()))
    # distinct files: the ADC slices, the SEG, img.nii.gz and two NIfTI masks
    assert first_cache.misses == slices + 4
    assert first_cache.hits == 1  # img.nii.gz is the image of two cases
    first_cache.save(store)

    second_cache = HashCache.load(store, racy_window_ns=WINDOW_NS)
    second = load_cases(
        landing,
        scan.series,
        PSEUDONYMIZE,
        previous=first.cases,
        scan_files=scan.files,
        hashes=second_cache,
    )
    assert second.cases.equals(plain.cases) and second.stats["reused"] == 3
    assert second_cache.misses == 0
    assert second_cache.hits == first_cache.hits + first_cache.misses


def test_cases_asset_reports_hash_cache_counts(lake):
    """The asset loads and saves the cache in state/; the re-run hashes no file again."""
    import dagster as dg

    from assets.imaging.defs import cases, imaging_series
    from dagster_project.resources import LakeResource

    pyrad = shared_path("pyradiomics")
    for name in ("breast1_image.nrrd", "breast1_label.nrrd"):
        copy(pyrad / name, lake.landing / "imaging" / "C1" / name)
    let_age(HashCache.RACY_WINDOW_NS)  # the asset uses the default window

    counts = []
    with dg.instance_for_test() as instance:
        for _ in range(2):
            result = dg.materialize(
                [imaging_series, cases], instance=instance, resources={"lake": LakeResource()}
            )
            assert result.success
            metadata = result.asset_materializations_for_node("cases")[0].metadata
            counts.append((metadata["hash_cache_hits"].value, metadata["hash_cache_misses"].value))
    assert counts == [(0, 2), (2, 0)]
    assert (lake.state_dir / HASH_CACHE_FILE).stat().st_mode & 0o777 == 0o600
