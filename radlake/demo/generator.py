"""Deterministic demo landing zone: a multi-center contrast-enhanced CT cohort shaped like the GIST
mitotic-index study, plus the group's grant and publication exports.

``generate_demo(home)`` writes only under ``home/landing/`` (CONTRACT section 1)::

    landing/imaging/<center>/cases.csv                      pyradiomics batch CSV (Image, Mask, ...)
    landing/imaging/<center>/<series folders>/IM0001.dcm    real CT Image Storage DICOM (pydicom)
    landing/imaging/<center>/masks/*.nii.gz                 lesion masks (SimpleITK), label 1
    landing/features/<center>/deep_features.csv             patient_id + 16 "deep embedding" columns
    landing/clinical/clinical.csv (+ schema.yaml)           one row per patient, outcomes
    landing/portfolio/grants/nsfc_grants.csv                NSFC-style export, Chinese headers
    landing/portfolio/grants/nsfc_grants_2019_update.csv    a later 2019 export (one grant repeated)
    landing/portfolio/publications/group_export.txt         the group's list format (seed_export)

Series folders of odd centers (C1, C3, ...) are named after the hospital patient id
(``C1/GZ2019-004711/CT_PV/``), those of even centers after the accession number
(``C2/A190047113/SE3/``); the ids also live in the DICOM tags (PatientID, PatientName,
PatientBirthDate), so the lake must pseudonymize both. Even centers write slices head-first
(InstanceNumber 1 = highest z), so readers must sort by ImagePositionPatient.

A latent binary label ``mi_high`` drives lesion size, enhancement and heterogeneity through two
noisy latent scores, so radiomics models reach an AUC of about 0.7-0.8, not 1.0. Lesions are
scaled to fit the small 48x48 field of view; clinical ``tumor_size_cm`` is on the real scale.

Deliberate defects, so quarantine is exercised (documented in ``CLINICAL_DEFECTS`` and
``GRANT_DEFECTS``); the three bad clinical rows are extra rows without imaging:

- clinical.csv: one row with an empty ``patient_id``; one with a negative ``rfs_months``;
  one with ``rfs_event`` = 2.
- nsfc_grants.csv: one grant with a negative 金额（万元）; nsfc_grants_2019_update.csv repeats
  one 批准号 of nsfc_grants.csv (same grant, exported twice).
- group_export.txt: one paper appears twice; one record has no author line (like the seed).

Deterministic: the same arguments give byte-identical files (``numpy.random.default_rng`` seeded
from ``seed``, UIDs from ``pydicom.uid.generate_uid(entropy_srcs=...)``, no wall-clock dates).
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from dagster_project.lake import Lake

DEMO_TAG = "radlake-demo-v1"  # mixed into every UID so demo UIDs never collide with other data
DATA_CUTOFF = date(2021, 12, 31)  # end of follow-up (a fixed date: never the wall clock)
SURGERY_FIRST, SURGERY_LAST = date(2013, 1, 1), date(2018, 6, 30)
MONTH_DAYS = 30.4375
ROWS = COLUMNS = 48

CLINICAL_COLUMNS = (
    "patient_id",
    "center_id",
    "age",
    "sex",
    "surgery_date",
    "tumor_location",
    "tumor_size_cm",
    "mi_high",
    "rfs_months",
    "rfs_event",
    "os_months",
    "os_event",
)
CASES_COLUMNS = ("Image", "Mask", "Label", "patient_id", "study_id", "phase")
GRANT_COLUMNS = (
    "批准号",
    "项目名称",
    "负责人",
    "依托单位",
    "项目类别",
    "金额（万元）",
    "批准年份",
    "结题年份",
    "申请代码",
    "关键词",
)
CHROME_LINES = ("Result Analysis", "Print", "Save", "E-mail")  # page chrome of the seed export

CLINICAL_DEFECTS = {
    "missing_patient_id": "a row whose patient_id is empty",
    "negative_rfs_months": "a row whose rfs_months is negative",
    "invalid_rfs_event": "a row whose rfs_event is 2 (allowed: 0, 1)",
}
GRANT_DEFECTS = {
    "negative_amount": "nsfc_grants.csv: one grant whose 金额（万元） is negative",
    "duplicate_grant_id": "nsfc_grants_2019_update.csv repeats one 批准号 of nsfc_grants.csv",
}


# --- centers and their CT protocols -------------------------------------------------------------
@dataclass(frozen=True)
class CenterProtocol:
    """How one hospital scans and names things. Spacings are dyadic so NIfTI float32 is exact."""

    center_id: str
    id_prefix: str  # hospital patient ids look like GZ2019-004711
    institution: str
    manufacturer: str
    model: str
    slice_thickness_mm: float
    n_slices: int
    pixel_spacing_mm: float
    kernel: str
    kvp: int
    contrast_agent: str
    noise_hu: float  # scanner noise at this kernel and thickness
    rescale_intercept: int  # -1024: stored value = HU + 1024; 0: stored value = HU


PROTOCOLS = (
    CenterProtocol("C1", "GZ", "GUANGDONG PROVINCIAL PEOPLES HOSPITAL", "SIEMENS",
                   "SOMATOM Definition AS", 1.25, 20, 0.78125, "B30f", 120, "Ultravist 370", 11.0, -1024),
    CenterProtocol("C2", "SD", "SHANDONG PROVINCIAL HOSPITAL", "GE MEDICAL SYSTEMS",
                   "Discovery CT750 HD", 5.0, 12, 0.703125, "STANDARD", 120, "Omnipaque 350", 6.0, 0),
    CenterProtocol("C3", "SZ", "SHENZHEN PEOPLES HOSPITAL", "Philips", "Brilliance iCT 256",
                   2.0, 16, 0.75, "B", 120, "Iopamiro 370", 9.0, -1024),
    CenterProtocol("C4", "ZJ", "ZHEJIANG CANCER HOSPITAL", "TOSHIBA", "Aquilion ONE",
                   1.0, 20, 0.7421875, "FC08", 120, "Omnipaque 300", 12.0, -1024),
    CenterProtocol("C5", "HN", "HUNAN CANCER HOSPITAL", "SIEMENS", "SOMATOM Force",
                   1.5, 16, 0.8203125, "Br40d", 100, "Ultravist 370", 10.0, -1024),
    CenterProtocol("C6", "SC", "SICHUAN CANCER HOSPITAL", "GE MEDICAL SYSTEMS", "Revolution CT",
                   2.5, 12, 0.78125, "STANDARD", 120, "Omnipaque 350", 8.0, 0),
    CenterProtocol("C7", "FJ", "FUJIAN CANCER HOSPITAL", "Philips", "IQon Spectral CT",
                   3.0, 12, 0.6640625, "B", 120, "Iopamiro 370", 7.0, -1024),
)  # fmt: skip
PHASES = {"portal_venous": ("portal venous", "PV"), "arterial": ("arterial", "ART")}

SURNAMES = (
    "ZHANG", "WANG", "LI", "LIU", "CHEN", "YANG", "HUANG", "ZHAO", "WU", "ZHOU",
    "XU", "SUN", "MA", "ZHU", "HU", "GUO", "HE", "LIN", "LUO", "GAO",
    "LIANG", "ZHENG", "XIE", "SONG", "TANG", "HAN", "FENG", "DENG", "CAO", "PENG",
    "ZENG", "XIAO", "TIAN", "DONG", "PAN", "YUAN", "CAI", "JIANG", "YU", "DU",
    "YE", "CHENG", "WEI", "SU", "LU", "DING", "REN", "SHEN", "YAO", "QIAN",
)  # fmt: skip
GIVEN_NAMES = (
    "WEI", "FANG", "NA", "MIN", "JING", "LI", "QIANG", "LEI", "JUN", "YANG",
    "YONG", "YAN", "JIE", "JUAN", "TAO", "MING", "CHAO", "XIUYING", "HUA", "PING",
    "GANG", "GUILAN", "XIAOMING", "JIANHUA", "HAIYAN", "LIHUA", "ZHIQIANG", "YUQIN", "DONGMEI", "JIANGUO",
    "XIAOHONG", "WENJUN", "YUHANG", "ZIHAN", "HAOYU", "XINYI", "JIAQI", "SHUFEN", "GUOQING", "YULAN",
)  # fmt: skip


def center_sizes(patients: int, centers: int) -> list[int]:
    """Patients per center: 70/30 for two centers, else sizes decreasing like 1/k."""
    if centers < 1 or centers > len(PROTOCOLS):
        raise ValueError(f"centers must be between 1 and {len(PROTOCOLS)}, got {centers}")
    if patients < centers:
        raise ValueError(f"need at least one patient per center ({patients} < {centers})")
    weights = [0.7, 0.3] if centers == 2 else [1.0 / (k + 1) for k in range(centers)]
    sizes = _allocate(patients, weights)
    # every center needs a patient; take them from the largest center
    for k in range(centers):
        if sizes[k] == 0:
            sizes[k], sizes[0] = 1, sizes[0] - 1
    return sizes


def _allocate(total: int, weights: list[float]) -> list[int]:
    """Largest-remainder rounding: integer counts that sum to ``total`` (deterministic)."""
    share = np.asarray(weights, dtype=float) / float(np.sum(weights)) * total
    counts = np.floor(share).astype(int)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return [int(c) for c in counts]


# --- the simulated cohort -------------------------------------------------------------------------
@dataclass
class DemoSeries:
    """One CT series of a patient (one case in cases.csv)."""

    phase: str  # portal_venous | arterial
    series_number: int


@dataclass
class DemoPatient:
    """Everything the generator knows about one patient: identifiers, latent truth, outcomes."""

    index: int  # global index (rng stream of the images)
    center_id: str
    patient_id: str
    name: str
    sex: str
    birth_date: date
    age: int
    study_date: date
    surgery_date: date
    accession: str
    mi_high: int
    size_score: float  # latent: drives lesion size
    texture_score: float  # latent: drives heterogeneity, enhancement, necrosis
    tumor_location: str
    tumor_size_cm: float
    rfs_months: float
    rfs_event: int
    os_months: float
    os_event: int
    series: list[DemoSeries] = field(default_factory=list)


def simulate_cohort(patients: int = 120, seed: int = 7, centers: int = 2) -> list[DemoPatient]:
    """The cohort without any file: identifiers, latent label, clinical data and outcomes.

    Pure and vectorized (linear in ``patients``); ``generate_demo`` renders it to files.
    """
    rng = np.random.default_rng([seed, 1])
    sizes = center_sizes(patients, centers)
    n = patients

    mi_high = (rng.random(n) < 0.42).astype(int)  # 145/348 high-MI in the paper
    common = rng.normal(size=n)
    size_score = 1.1 * mi_high + 0.6 * common + 0.8 * rng.normal(size=n)
    texture_score = 1.1 * mi_high + 0.6 * common + 0.8 * rng.normal(size=n)
    # clinical size: shares the image's size signal plus its own link to the label
    log_size = np.log(4.5) + 0.2 * size_score + 0.1 * mi_high + 0.3 * rng.normal(size=n)
    tumor_size = np.clip(np.exp(log_size), 1.0, 25.0)
    p_gastric = np.where(mi_high == 1, 0.50, 0.68)
    p_small = np.where(mi_high == 1, 0.38, 0.24)
    u = rng.random(n)
    location = np.where(
        u < p_gastric, "gastric", np.where(u < p_gastric + p_small, "small_intestine", "other")
    )

    age = np.clip(np.round(rng.normal(58, 11, size=n)), 24, 86).astype(int)
    sex = np.where(rng.random(n) < 0.52, "M", "F")
    span = (SURGERY_LAST - SURGERY_FIRST).days
    surgery_offset = rng.integers(0, span + 1, size=n)
    scan_before = rng.integers(3, 29, size=n)  # preoperative CT 3-28 days before surgery
    birth_extra = rng.integers(0, 365, size=n)

    # outcomes: Weibull recurrence (HR ~3.3 for high MI), death after recurrence, admin censoring
    lp = 1.2 * mi_high + 0.08 * (tumor_size - 5.0) + 0.3 * (location == "small_intestine")
    shape = 1.2
    recurrence = 333.0 * np.exp(-lp / shape) * (-np.log(rng.random(n))) ** (1 / shape)
    other_death = 900.0 * (-np.log(rng.random(n))) ** (1 / 1.5)
    death = np.minimum(recurrence + rng.exponential(40.0, size=n), other_death)
    rfs_true = np.minimum(recurrence, death)
    surgery_dates = [SURGERY_FIRST + timedelta(days=int(d)) for d in surgery_offset]
    admin = np.array([(DATA_CUTOFF - d).days / MONTH_DAYS for d in surgery_dates])
    censor = np.minimum(admin, rng.exponential(220.0, size=n))  # loss to follow-up
    censor = np.maximum(censor, 1.0)
    rfs_months = np.maximum(np.round(np.minimum(rfs_true, censor), 1), 0.1)
    os_months = np.maximum(np.round(np.minimum(death, censor), 1), rfs_months)

    primary_arterial = rng.random(n) < 0.06  # a few patients only have an arterial series
    second_arterial = rng.random(n) < 0.08  # a few have an arterial series besides the PV one
    surnames = rng.integers(0, len(SURNAMES), size=n)
    given = rng.integers(0, len(GIVEN_NAMES), size=n)

    cohort: list[DemoPatient] = []
    start = 0
    for k, size in enumerate(sizes):
        protocol = PROTOCOLS[k]
        serials = rng.choice(900_000, size=size, replace=False) + 1000
        accessions = rng.choice(9_000_000, size=size, replace=False) + 1_000_000
        for j in range(size):
            i = start + j
            study = surgery_dates[i] - timedelta(days=int(scan_before[i]))
            birth = date(surgery_dates[i].year - int(age[i]), 1, 1) + timedelta(
                days=int(birth_extra[i])
            )
            # age at surgery from the birth date (so the DICOM PatientAge agrees with it)
            years = (
                surgery_dates[i].year
                - birth.year
                - ((surgery_dates[i].month, surgery_dates[i].day) < (birth.month, birth.day))
            )
            phases = ["arterial"] if primary_arterial[i] else ["portal_venous"]
            if not primary_arterial[i] and second_arterial[i]:
                phases.append("arterial")
            cohort.append(
                DemoPatient(
                    index=i,
                    center_id=protocol.center_id,
                    patient_id=f"{protocol.id_prefix}{surgery_dates[i].year}-{int(serials[j]):06d}",
                    name=f"{SURNAMES[surnames[i]]}^{GIVEN_NAMES[given[i]]}",
                    sex=str(sex[i]),
                    birth_date=birth,
                    age=int(years),
                    study_date=study,
                    surgery_date=surgery_dates[i],
                    accession=f"A{study.year % 100:02d}{int(accessions[j]):07d}",
                    mi_high=int(mi_high[i]),
                    size_score=float(size_score[i]),
                    texture_score=float(texture_score[i]),
                    tumor_location=str(location[i]),
                    tumor_size_cm=round(float(tumor_size[i]), 1),
                    rfs_months=float(rfs_months[i]),
                    rfs_event=int(rfs_true[i] <= censor[i]),
                    os_months=float(os_months[i]),
                    os_event=int(death[i] <= censor[i]),
                    series=[DemoSeries(p, 3 + s) for s, p in enumerate(phases)],
                )
            )
        start += size
    return cohort


# --- images ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """Geometry of one axial series, slices ascending in z (what SimpleITK reports)."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]  # (column = x, row = y, slice = z) in mm
    size: tuple[int, int, int]  # (x, y, z)


def _geometry(protocol: CenterProtocol, rng: np.random.Generator) -> Geometry:
    sx = protocol.pixel_spacing_mm
    # dyadic values (multiples of 1/128 mm): exact in DICOM DS text and in NIfTI float32
    x0 = -sx * (COLUMNS // 2) + 0.5 * int(rng.integers(-40, 41))
    y0 = -sx * (ROWS // 2) + 0.5 * int(rng.integers(-40, 41))
    z0 = -float(rng.integers(60, 260)) + 0.5 * int(rng.integers(0, 2))
    return Geometry(
        (x0, y0, z0), (sx, sx, protocol.slice_thickness_mm), (COLUMNS, ROWS, protocol.n_slices)
    )


@dataclass(frozen=True)
class Lesion:
    """An ellipsoid lesion in mm, relative to the volume center, with its texture parameters."""

    # (z, y, x) voxel at the lesion center, so the mask is never empty
    center_vox: tuple[int, int, int]
    semi_axes_mm: tuple[float, float, float]  # (a, b, c): in-plane, in-plane, z
    angle: float
    mean_hu: float
    heterogeneity_hu: float
    texture_sigma_mm: float
    necrosis: bool


def _lesion(patient: DemoPatient, geometry: Geometry, rng: np.random.Generator) -> Lesion:
    size_c = patient.size_score - 0.4
    tex_c = patient.texture_score - 0.4
    a = float(np.clip(7.0 + 1.7 * size_c + rng.normal(0, 0.6), 4.0, 12.0))
    b = a * float(rng.uniform(0.75, 1.0))
    z_extent = geometry.spacing[2] * geometry.size[2]
    c = float(np.clip(a * rng.uniform(0.7, 1.0), 5.5, min(10.5, 0.42 * z_extent)))
    nx, ny, nz = geometry.size
    shift = rng.integers(-4, 5, size=2)
    return Lesion(
        center_vox=(nz // 2, ny // 2 + int(shift[0]), nx // 2 + int(shift[1])),
        semi_axes_mm=(a, b, c),
        angle=float(rng.uniform(0, math.pi)),
        mean_hu=float(68.0 - 7.0 * tex_c + rng.normal(0, 4.0)),
        heterogeneity_hu=float(np.clip(10.0 + 6.0 * tex_c + rng.normal(0, 1.5), 3.0, 30.0)),
        texture_sigma_mm=float(rng.uniform(0.6, 1.1)),
        necrosis=bool(patient.texture_score + rng.normal(0, 0.7) > 1.4),
    )


def _render(
    lesion: Lesion,
    geometry: Geometry,
    protocol: CenterProtocol,
    phase: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(HU volume int16, mask uint8), both indexed [z, y, x] with z ascending."""
    nx, ny, nz = geometry.size
    sx, sy, sz = geometry.spacing
    cz, cy, cx = lesion.center_vox
    z, y, x = np.meshgrid(
        (np.arange(nz) - cz) * sz,
        (np.arange(ny) - cy) * sy,
        (np.arange(nx) - cx) * sx,
        indexing="ij",
    )
    cos, sin = math.cos(lesion.angle), math.sin(lesion.angle)
    u, v = cos * x + sin * y, -sin * x + cos * y
    a, b, c = lesion.semi_axes_mm
    q = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (z / c) ** 2)
    mask = (q <= 1.0).astype(np.uint8)

    # soft tissue with slow variation and a fat region, then the enhancing lesion
    arterial = phase == "arterial"
    spacing_zyx = (sz, sy, sx)
    shape = (nz, ny, nx)
    background = (38.0 if arterial else 45.0) + 25.0 * _smooth_field(rng, shape, spacing_zyx, 4.0)
    fat = _smooth_field(rng, shape, spacing_zyx, 5.5) > 0.9
    background[fat & (q > 1.6)] = -95.0
    texture = _smooth_field(rng, shape, spacing_zyx, lesion.texture_sigma_mm)
    inside = lesion.mean_hu + (14.0 if arterial else 0.0) + lesion.heterogeneity_hu * texture
    if lesion.necrosis:
        inside = np.where(q < 0.5, 18.0 + 0.4 * lesion.heterogeneity_hu * texture, inside)
    weight = 1.0 / (1.0 + np.exp(np.clip((q - 1.0) * min(a, b) / 0.7, -50, 50)))  # partial volume
    hu = (
        background * (1.0 - weight)
        + inside * weight
        + rng.normal(0.0, protocol.noise_hu, size=q.shape)
    )
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), mask


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], sigma_mm: float
) -> np.ndarray:
    """Correlated noise with unit standard deviation; correlation length in mm (isotropic)."""
    from scipy.ndimage import gaussian_filter

    sigma = [sigma_mm / s for s in spacing]
    field_ = gaussian_filter(rng.normal(size=shape), sigma=sigma, mode="reflect", truncate=3.0)
    return field_ / max(float(field_.std()), 1e-6)


def _ds(value: float) -> str:
    """Decimal String text; our geometry values are dyadic, so repr is short and exact."""
    return repr(float(value))


def _uid(seed: int, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[DEMO_TAG, str(seed), *map(str, parts)])


@dataclass(frozen=True)
class SeriesContext:
    """What every slice of one series shares (identifiers, UIDs, protocol, geometry)."""

    patient: DemoPatient
    protocol: CenterProtocol
    series: DemoSeries
    geometry: Geometry
    seed: int
    descending: bool  # InstanceNumber 1 = highest z (head-first storage)

    def uid(self, *parts: object) -> str:
        return _uid(self.seed, self.protocol.center_id, self.patient.patient_id, *parts)

    def instance(self, k: int) -> int:
        """InstanceNumber of the k-th slice in ascending z."""
        return self.geometry.size[2] - k if self.descending else k + 1


# tags that change from slice to slice: SOPInstanceUID, InstanceNumber, ImagePositionPatient,
# SliceLocation, PixelData (everything else is encoded once per series)
SLICE_TAGS = (0x00080018, 0x00200013, 0x00200032, 0x00201041, 0x7FE00010)


def _slice_elements(ctx: SeriesContext, k: int, pixels: np.ndarray):
    """The SLICE_TAGS elements of the k-th slice in ascending z (a pydicom Dataset)."""
    from pydicom.dataset import Dataset

    x0, y0, z0 = ctx.geometry.origin
    z = z0 + k * ctx.geometry.spacing[2]
    instance = ctx.instance(k)
    ds = Dataset()
    ds.SOPInstanceUID = ctx.uid("sop", ctx.series.series_number, instance)
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
    ds.SliceLocation = _ds(z)
    ds.add_new(0x7FE00010, "OW", pixels.astype("<i2").tobytes())  # PixelData, 16-bit words
    return ds


def _file_meta(sop_uid: str):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RADLAKE_DEMO_1"
    return meta


def slice_dataset(ctx: SeriesContext, k: int, pixels: np.ndarray):
    """The complete CT Image Storage dataset (with file meta) of the k-th slice in ascending z."""
    from pydicom.dataset import FileDataset
    from pydicom.uid import CTImageStorage

    patient, protocol, geometry = ctx.patient, ctx.protocol, ctx.geometry
    varying = _slice_elements(ctx, k, pixels)
    study_date = patient.study_date.strftime("%Y%m%d")
    minute = 8 * 60 + (patient.index * 7) % 540 + (2 if ctx.series.phase == "portal_venous" else 1)
    study_time = f"{minute // 60:02d}{minute % 60:02d}00"
    ds = FileDataset(None, {}, file_meta=_file_meta(varying.SOPInstanceUID), preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study_time
    ds.AccessionNumber = patient.accession
    ds.Modality = "CT"
    ds.Manufacturer = protocol.manufacturer
    ds.InstitutionName = protocol.institution
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT ABDOMEN PELVIS WITH CONTRAST"
    phase_text = PHASES[ctx.series.phase][0]
    ds.SeriesDescription = f"{phase_text} {protocol.slice_thickness_mm:g}mm {protocol.kernel}"
    ds.ManufacturerModelName = protocol.model
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age:03d}Y"
    ds.ContrastBolusAgent = protocol.contrast_agent
    ds.ContrastBolusRoute = "IV"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SliceThickness = _ds(protocol.slice_thickness_mm)
    ds.KVP = str(protocol.kvp)
    ds.SpacingBetweenSlices = _ds(geometry.spacing[2])
    ds.ConvolutionKernel = protocol.kernel
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = ctx.uid("study")
    ds.SeriesInstanceUID = ctx.uid("series", ctx.series.series_number)
    ds.StudyID = patient.accession
    ds.SeriesNumber = ctx.series.series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = ctx.uid("frame")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = geometry.size[1], geometry.size[0]
    ds.PixelSpacing = [_ds(geometry.spacing[1]), _ds(geometry.spacing[0])]  # row, column
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = str(protocol.rescale_intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.update(varying)
    return ds


def stored_pixels(hu: np.ndarray, protocol: CenterProtocol) -> np.ndarray:
    """Stored int16 values for HU values (RescaleSlope 1, the center's RescaleIntercept)."""
    return (hu.astype(np.int32) - protocol.rescale_intercept).astype(np.int16)


def _write_series(folder: Path, ctx: SeriesContext, hu: np.ndarray) -> int:
    """Write one CT series, one file per slice; returns the number of files written.

    pydicom's dcmwrite re-encodes ~60 elements per file; here the elements shared by the series
    are encoded once and only SLICE_TAGS and the file meta are encoded per slice (same bytes as
    dcmwrite, checked in the tests), which makes the 2500-patient demo about five times faster.
    """
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    def encode(dataset: Dataset, meta: bool = False) -> bytes:
        buffer = DicomBytesIO()
        buffer.is_implicit_VR, buffer.is_little_endian = False, True
        if meta:
            write_file_meta_info(buffer, dataset, enforce_standard=True)
        else:
            write_dataset(buffer, dataset)
        return buffer.getvalue()

    folder.mkdir(parents=True, exist_ok=True)
    stored = stored_pixels(hu, ctx.protocol)
    template = slice_dataset(ctx, 0, stored[0])
    parts: list[bytes | list[int]] = []  # encoded runs of shared elements, or lists of slice tags
    run = Dataset()
    for element in template:  # iterates in tag order, as written
        if element.tag in SLICE_TAGS:
            if len(run):
                parts.append(encode(run))
                run = Dataset()
            if not parts or isinstance(parts[-1], bytes):
                parts.append([])
            parts[-1].append(element.tag)
        else:
            run.add(element)
    if len(run):
        parts.append(encode(run))

    for k in range(ctx.geometry.size[2]):
        varying = template if k == 0 else _slice_elements(ctx, k, stored[k])
        meta = template.file_meta if k == 0 else _file_meta(varying.SOPInstanceUID)
        chunks = [b"\0" * 128, b"DICM", encode(meta, meta=True)]
        for part in parts:
            if isinstance(part, bytes):
                chunks.append(part)
            else:
                subset = Dataset()
                for tag in part:
                    subset.add(varying[tag])
                chunks.append(encode(subset))
        (folder / f"IM{ctx.instance(k):04d}.dcm").write_bytes(b"".join(chunks))
    return ctx.geometry.size[2]


def _write_mask(path: Path, mask: np.ndarray, geometry: Geometry) -> None:
    """NIfTI mask on exactly the series grid (origin = lowest slice, identity direction)."""
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(mask)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path), True)


def _series_folder(protocol: CenterProtocol, patient: DemoPatient, series: DemoSeries) -> str:
    """Odd centers name folders after the patient id, even centers after the accession number."""
    if int(protocol.center_id[1:]) % 2 == 1:
        return f"{patient.patient_id}/CT_{PHASES[series.phase][1]}"
    return f"{patient.accession}/SE{series.series_number}"


# --- the generator --------------------------------------------------------------------------------
def generate_demo(
    home: Path, patients: int = 200, seed: int = 7, centers: int = 2, force: bool = False
) -> dict[str, int]:
    """Write a deterministic demo landing zone into ``home/landing``; returns counts of what it wrote.

    Refuses to write when ``home/landing`` already holds files, unless ``force`` (which deletes
    ``home/landing`` first). The demo's own cohort SQL and study go into ``home/sql/cohorts/`` and
    ``home/studies/`` (``demo_definitions``): a file of the same name there is kept unless ``force``.
    Everything else in ``home`` is left alone.
    """
    landing = Lake.at(home).landing
    existing = [p for p in landing.rglob("*") if p.is_file()] if landing.is_dir() else []
    if existing:
        if not force:
            raise FileExistsError(
                f"{landing} already holds {len(existing)} file(s): demo data is only written into an "
                "empty landing zone. Use another LAKE_HOME, or pass force=True "
                "(radlake demo-data --force) to delete landing/ and regenerate it."
            )
        shutil.rmtree(landing)
        landing.mkdir(parents=True)

    cohort = simulate_cohort(patients, seed, centers)
    counts = {
        "patients": len(cohort),
        "centers": centers,
        "series": 0,
        "dicom_files": 0,
        "cases": 0,
        "masks": 0,
    }
    for protocol in PROTOCOLS[:centers]:
        members = [p for p in cohort if p.center_id == protocol.center_id]
        written = _write_center_imaging(
            landing / "imaging" / protocol.center_id, protocol, members, seed
        )
        for name, value in written.items():
            counts[name] += value
        counts["feature_rows"] = counts.get("feature_rows", 0) + _write_deep_features(
            landing / "features" / protocol.center_id / "deep_features.csv", members, seed
        )
    counts.update(_write_clinical(landing / "clinical", cohort, seed))
    grant_counts, cited = _write_grants(landing / "portfolio" / "grants", patients, seed)
    counts.update(grant_counts)
    counts.update(
        _write_publications(
            landing / "portfolio" / "publications" / "group_export.txt", cited, seed
        )
    )
    written = write_demo_definitions(home, force=force)
    counts["demo_definitions"] = len(written)
    _add_demo_funding([p for p in written if p.suffix == ".yaml"], sorted(cited))
    return counts


def _add_demo_funding(studies: list[Path], grant_ids: list[str]) -> None:
    """The demo study is funded by the grants its papers acknowledge (ids are drawn per seed, so
    they are appended to the copied study YAML: ``funding:``, view ``grant_outputs``)."""
    for path in studies:
        if grant_ids and "\nfunding:" not in path.read_text(encoding="utf-8"):
            with path.open("a", encoding="utf-8") as handle:
                handle.write(f"funding: [{', '.join(repr(g) for g in grant_ids[:2])}]\n")


DEMO_DIR = Path(__file__).resolve().parent


def demo_definitions() -> dict[str, Path]:
    """The demo's cohorts and study: path relative to LAKE_HOME -> the shipped file."""
    files = sorted((DEMO_DIR / "sql" / "cohorts").glob("*.sql"))
    files += sorted((DEMO_DIR / "studies").glob("*.yaml"))
    return {path.relative_to(DEMO_DIR).as_posix(): path for path in files}


def write_demo_definitions(home: Path, force: bool = False) -> list[Path]:
    """Copy the demo's cohort SQL and study YAML into ``home`` (what made it a demo lake)."""
    written = []
    for relative, source in demo_definitions().items():
        target = Path(home) / relative
        if target.exists() and not force:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(target)
    return written


def render_patient(
    patient: DemoPatient, protocol: CenterProtocol, seed: int
) -> list[tuple[SeriesContext, np.ndarray, np.ndarray]]:
    """(series context, HU volume, mask) of each series of a patient; volumes are [z, y, x]."""
    descending = int(protocol.center_id[1:]) % 2 == 0  # even centers store slices head-first
    rng = np.random.default_rng([seed, 2, patient.index])
    geometry = _geometry(protocol, rng)
    lesion = _lesion(patient, geometry, rng)
    rendered = []
    for series in patient.series:
        hu, mask = _render(lesion, geometry, protocol, series.phase, rng)
        ctx = SeriesContext(patient, protocol, series, geometry, seed, descending)
        rendered.append((ctx, hu, mask))
    return rendered


def _write_center_imaging(
    folder: Path, protocol: CenterProtocol, members: list[DemoPatient], seed: int
) -> dict[str, int]:
    rows, files = [], 0
    for patient in members:
        for ctx, hu, mask in render_patient(patient, protocol, seed):
            relative = _series_folder(protocol, patient, ctx.series)
            files += _write_series(folder / relative, ctx, hu)
            mask_name = f"masks/{relative.replace('/', '_')}_lesion.nii.gz"
            _write_mask(folder / mask_name, mask, ctx.geometry)
            phase = ctx.series.phase
            rows.append([relative, mask_name, 1, patient.patient_id, patient.accession, phase])
    _write_csv(folder / "cases.csv", CASES_COLUMNS, rows)
    return {"series": len(rows), "dicom_files": files, "cases": len(rows), "masks": len(rows)}


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _write_deep_features(path: Path, members: list[DemoPatient], seed: int) -> int:
    """patient_id + 16 'embedding' columns; the first three carry a weak label signal."""
    rng = np.random.default_rng([seed, 3, int(path.parent.name[1:])])
    rows = []
    for patient in members:
        values = rng.normal(size=16)
        values[:3] += 0.35 * (patient.size_score + patient.texture_score) / 2
        rows.append([patient.patient_id, *(f"{v:.5f}" for v in values)])
    _write_csv(path, ("patient_id", *(f"deep_{k:02d}" for k in range(16))), rows)
    return len(rows)


CLINICAL_SCHEMA_YAML = """\
description: Demo GIST cohort, outcomes from the hospital registry (radlake demo-data)
columns:
  patient_id:     {type: string, required: true}
  center_id:      {type: category, required: true}
  age:            {type: int, unit: years}
  sex:            {type: category, allowed: [F, M]}
  surgery_date:   {type: date, format: "%Y-%m-%d"}
  tumor_location: {type: category, allowed: [gastric, small_intestine, other]}
  tumor_size_cm:  {type: float, unit: cm}
  mi_high:        {type: event, description: mitotic index > 5 per 50 HPF}
  rfs_months:     {type: duration, unit: months, required: true}
  rfs_event:      {type: event, required: true}
  os_months:      {type: duration, unit: months}
  os_event:       {type: event}
"""


def _write_clinical(folder: Path, cohort: list[DemoPatient], seed: int) -> dict[str, int]:
    """clinical.csv (one row per patient, three defective extra rows) and its schema.yaml."""
    rng = np.random.default_rng([seed, 4])
    rows = [_clinical_row(p) for p in cohort]
    # extra patients without imaging, each with one defect (CLINICAL_DEFECTS)
    extras = simulate_cohort(3, seed + 1000, 1)
    bad = []
    for patient, defect in zip(extras, CLINICAL_DEFECTS, strict=True):
        patient.patient_id = (
            f"{PROTOCOLS[0].id_prefix}{patient.surgery_date.year}-{990000 + len(bad):06d}"
        )
        row = _clinical_row(patient)
        if defect == "missing_patient_id":
            row[0] = ""
        elif defect == "negative_rfs_months":
            row[8] = f"{-abs(patient.rfs_months):.1f}"
        else:
            row[9] = "2"
        bad.append(row)
    for row in bad:  # scattered through the file, as in a registry export
        rows.insert(int(rng.integers(0, len(rows) + 1)), row)
    _write_csv(folder / "clinical.csv", CLINICAL_COLUMNS, rows)
    (folder / "schema.yaml").write_text(CLINICAL_SCHEMA_YAML, encoding="utf-8")
    return {"clinical_rows": len(rows), "clinical_bad_rows": len(bad)}


def _clinical_row(p: DemoPatient) -> list:
    return [
        p.patient_id,
        p.center_id,
        p.age,
        p.sex,
        p.surgery_date.isoformat(),
        p.tumor_location,
        f"{p.tumor_size_cm:.1f}",
        p.mi_high,
        f"{p.rfs_months:.1f}",
        p.rfs_event,
        f"{p.os_months:.1f}",
        p.os_event,
    ]


# --- grants (NSFC-style export) -------------------------------------------------------------------
# (institution, province); Beijing, Shanghai and Guangdong hold about half of the grants
HUB_INSTITUTIONS = (
    ("北京大学", "北京"), ("清华大学", "北京"), ("首都医科大学", "北京"),
    ("中国医学科学院肿瘤医院", "北京"), ("中国人民解放军总医院", "北京"),
    ("中国医学科学院北京协和医院", "北京"), ("中国科学院自动化研究所", "北京"),
    ("复旦大学", "上海"), ("上海交通大学", "上海"), ("同济大学", "上海"),
    ("复旦大学附属中山医院", "上海"), ("上海交通大学医学院附属瑞金医院", "上海"),
    ("中山大学", "广东"), ("南方医科大学", "广东"), ("广东省人民医院", "广东"),
    ("中山大学肿瘤防治中心", "广东"), ("华南理工大学", "广东"), ("深圳大学", "广东"),
    ("中国科学院深圳先进技术研究院", "广东"),
)  # fmt: skip
OTHER_INSTITUTIONS = (
    ("浙江大学", "浙江"), ("四川大学", "四川"), ("华中科技大学", "湖北"), ("武汉大学", "湖北"),
    ("中南大学", "湖南"), ("山东大学", "山东"), ("青岛大学", "山东"), ("西安交通大学", "陕西"),
    ("空军军医大学", "陕西"), ("天津医科大学", "天津"), ("中国医科大学", "辽宁"),
    ("郑州大学", "河南"), ("东南大学", "江苏"), ("南京医科大学", "江苏"), ("苏州大学", "江苏"),
    ("重庆医科大学", "重庆"), ("福建医科大学", "福建"), ("安徽医科大学", "安徽"),
    ("吉林大学", "吉林"), ("哈尔滨医科大学", "黑龙江"),
)  # fmt: skip
REGIONAL_INSTITUTIONS = (  # 地区科学基金 is open only to these provinces
    ("广西医科大学", "广西"), ("新疆医科大学", "新疆"), ("昆明医科大学", "云南"),
    ("贵州医科大学", "贵州"), ("南昌大学", "江西"), ("内蒙古医科大学", "内蒙古"),
    ("兰州大学", "甘肃"), ("海南医学院", "海南"), ("宁夏医科大学", "宁夏"),
)  # fmt: skip
INSTITUTION_PROVINCE = dict(HUB_INSTITUTIONS + OTHER_INSTITUTIONS + REGIONAL_INSTITUTIONS)
# fund type -> (share, type digit of the 批准号, duration in years, amounts in 10k CNY)
FUND_TYPES = {
    "面上项目": (0.50, 7, 4, (55, 56, 57, 58, 60, 65)),
    "青年科学基金项目": (0.40, 0, 3, (18, 20, 21, 24)),
    "地区科学基金项目": (0.05, 6, 4, (32, 34, 35, 36, 38)),
    "重点项目": (0.03, 3, 5, (255, 280, 290, 300)),
    "优秀青年科学基金项目": (0.02, 2, 3, (120, 130)),
}
IMAGING_METHODS = (
    ("增强CT影像组学", ("影像组学", "CT", "radiomics")),
    ("多参数MRI影像组学", ("影像组学", "MRI", "磁共振成像")),
    ("深度学习与多期相CT影像", ("深度学习", "CT", "医学影像")),
    ("PET/CT影像组学", ("PET/CT", "影像组学", "代谢")),
    ("影像基因组学", ("影像基因组学", "MRI", "基因表达")),
    ("超声影像组学", ("超声", "影像组学", "机器学习")),
    ("能谱CT定量参数", ("能谱CT", "CT", "定量影像")),
)
OTHER_METHODS = (
    ("电子病历数据挖掘", ("电子病历", "数据挖掘", "机器学习")),
    ("液体活检", ("液体活检", "循环肿瘤DNA", "早期诊断")),
    ("多组学整合分析", ("多组学", "生物标志物", "机器学习")),
    ("自然语言处理", ("自然语言处理", "知识图谱", "临床决策支持")),
    ("单细胞测序", ("单细胞测序", "肿瘤微环境", "免疫治疗")),
)
DISEASES = (
    "胃肠道间质瘤",
    "肝细胞癌",
    "结直肠癌",
    "直肠癌",
    "肺腺癌",
    "乳腺癌",
    "鼻咽癌",
    "胰腺癌",
    "胃癌",
    "胶质瘤",
)
TASKS = (
    "核分裂象预测",
    "淋巴结转移预测",
    "预后预测",
    "新辅助治疗疗效预测",
    "复发风险分层",
    "分子分型无创预测",
    "免疫治疗疗效评估",
)
IMAGING_CODES = ("H1801", "H1802", "H1806", "H1809", "H1810", "H1812", "H18", "F0609", "F0604")
OTHER_CODES = ("H1601", "H1611", "H1617", "H1618", "H0305", "F0601", "H16")
PI_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高梁郑谢宋唐韩冯邓曹彭曾肖田董潘袁蔡蒋余杜叶程魏苏卢丁任沈姚钱"
PI_GIVEN = ("伟", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超",
            "华", "鹏", "辉", "宇", "晨", "婷", "欣", "昊", "一鸣", "子涵", "建国", "志强", "晓红",
            "海燕", "文君", "再毅", "振华", "雅琴", "思远")  # fmt: skip


def _grant_count(patients: int) -> int:
    """About 60 grants for the default 120 patients, growing mildly with the cohort."""
    return int(np.clip(round(60 * (patients / 120) ** 0.25), 20, 150))


def _grant_rows(
    n: int, years: list[int], rng: np.random.Generator, used: set[str]
) -> list[list[str]]:
    """``n`` grant rows; fund types and imaging share are allocated, not sampled (stable ratios)."""
    names = list(FUND_TYPES)
    fund = np.repeat(np.arange(len(names)), _allocate(n, [FUND_TYPES[k][0] for k in names]))
    imaging = np.arange(n) < round(2 * n / 3)
    hub = np.arange(n) < round(0.55 * n)
    fund, imaging, hub = rng.permutation(fund), rng.permutation(imaging), rng.permutation(hub)
    rows = []
    for i in range(n):
        fund_type = names[fund[i]]
        _, type_digit, duration, amounts = FUND_TYPES[fund_type]
        year = years[i]
        methods, codes = (
            (IMAGING_METHODS, IMAGING_CODES) if imaging[i] else (OTHER_METHODS, OTHER_CODES)
        )
        method, keywords = methods[int(rng.integers(0, len(methods)))]
        disease = DISEASES[int(rng.integers(0, len(DISEASES)))]
        task = TASKS[int(rng.integers(0, len(TASKS)))]
        title = (
            f"基于{method}的{disease}{task}研究"
            if rng.random() < 0.7
            else f"{disease}{task}的{method}模型构建与多中心验证"
        )
        code = codes[int(rng.integers(0, len(codes)))]
        department = 6 if code.startswith("F") else 8
        while True:  # 8 digits: department, 1, last digit of the year, fund type, serial
            grant_id = f"{department}1{year % 10}{type_digit}{int(rng.integers(0, 10_000)):04d}"
            if grant_id not in used:
                used.add(grant_id)
                break
        if fund_type == "地区科学基金项目":
            pool = REGIONAL_INSTITUTIONS
        else:
            pool = HUB_INSTITUTIONS if hub[i] else OTHER_INSTITUTIONS
        institution = pool[int(rng.integers(0, len(pool)))][0]
        pi = (
            PI_SURNAMES[int(rng.integers(0, len(PI_SURNAMES)))]
            + PI_GIVEN[int(rng.integers(0, len(PI_GIVEN)))]
        )
        amount = float(amounts[int(rng.integers(0, len(amounts)))])
        words = [*keywords, disease]
        rows.append(
            [
                grant_id,
                title,
                pi,
                institution,
                fund_type,
                f"{amount:.2f}",
                str(year),
                str(year + duration),
                code,
                "；".join(words),
            ]
        )
    return rows


def _write_grants(folder: Path, patients: int, seed: int) -> tuple[dict[str, int], dict[str, int]]:
    """The main export (2015-2019, counts rising) and a 2019 update; returns {grant id: year} to cite."""
    rng = np.random.default_rng([seed, 5])
    n = _grant_count(patients)
    per_year = _allocate(n, [1.0, 1.35, 1.8, 2.4, 3.2])
    years = [y for y, c in zip(range(2015, 2020), per_year, strict=True) for _ in range(c)]
    used: set[str] = set()
    rows = _grant_rows(n, years, rng, used)
    # list-number artifact of copy-pasted titles ("12.基于...")
    for i in rng.choice(n, size=max(1, round(0.08 * n)), replace=False):
        rows[int(i)][1] = f"{int(rng.integers(1, 40))}.{rows[int(i)][1]}"
    radiomics_ids = [r[0] for r in rows if "影像组学" in r[9]]
    picked = rng.choice(radiomics_ids, size=min(4, len(radiomics_ids)), replace=False)
    cited = {str(g): int(next(r[6] for r in rows if r[0] == g)) for g in picked}
    valid = [i for i, r in enumerate(rows) if r[0] not in cited]
    bad_index = valid[int(rng.integers(0, len(valid)))]
    rows[bad_index][5] = f"-{rows[bad_index][5]}"  # GRANT_DEFECTS["negative_amount"]
    _write_csv(folder / "nsfc_grants.csv", GRANT_COLUMNS, rows)

    update = _grant_rows(3, [2019] * 3, rng, used)
    repeated = next(
        r for r in rows if r[6] == "2019" and r[0] not in cited and not r[5].startswith("-")
    )
    update.insert(1, list(repeated))  # GRANT_DEFECTS["duplicate_grant_id"]
    _write_csv(folder / "nsfc_grants_2019_update.csv", GRANT_COLUMNS, update)
    counts = {
        "grant_files": 2,
        "grants": len(rows) + len(update) - 1,
        "grant_bad_rows": 1,
        "grant_duplicates": 1,
    }
    return counts, cited


# --- publications (the group's export format) -----------------------------------------------------
PUB_SURNAMES = (
    "ZHANG", "WANG", "LI", "LIU", "CHEN", "YANG", "HUANG", "ZHAO", "WU", "ZHOU",
    "XU", "SUN", "HU", "GUO", "HE", "LIN", "LUO", "GAO", "LIANG", "XIE",
    "TANG", "FENG", "DENG", "PENG",
)  # fmt: skip
PUB_GIVEN = ("Wei", "Xiaobo", "Yanqi", "Hexiang", "Lifen", "Yunrui", "Jing", "Ming", "Haitao", "Qian",
             "Zhenwei", "Ke", "Xin", "Yulin", "Chen", "Lei", "Ting", "Jiayi", "Shuo", "Yuting")  # fmt: skip
JOURNALS = (
    ("Chinese Journal of Radiology", 50),
    ("Chinese Medical Journal", 129),
    ("Journal of Clinical Radiology", 35),
    ("Chinese Journal of Medical Imaging Technology", 32),
    ("Radiologic Practice", 31),
)
# (title, aim of the study, population, imaging, kind: cohort | review | phantom)
PAPERS = (
    ("Radiomics nomogram based on contrast-enhanced CT for predicting mitotic index in gastrointestinal stromal tumors: a dual-center study",
     "preoperative prediction of the mitotic index", "gastrointestinal stromal tumors", "contrast-enhanced CT", "cohort"),
    ("Deep learning model based on portal venous phase CT for preoperative risk stratification of gastrointestinal stromal tumors",
     "preoperative risk stratification", "gastrointestinal stromal tumors", "portal venous phase CT", "cohort"),
    ("CT-based radiomics signature for predicting lymph node metastasis in colorectal cancer",
     "prediction of lymph node metastasis", "colorectal cancer", "contrast-enhanced CT", "cohort"),
    ("Multiparametric MRI radiomics for predicting pathological complete response after neoadjuvant chemoradiotherapy in rectal cancer",
     "prediction of pathological complete response", "locally advanced rectal cancer", "multiparametric MRI", "cohort"),
    ("Reproducibility of CT radiomic features across scanners and reconstruction kernels: a multicenter phantom study",
     "", "", "CT", "phantom"),
    ("Radiomics-based prediction of recurrence-free survival in hepatocellular carcinoma after hepatectomy",
     "prediction of recurrence-free survival", "hepatocellular carcinoma", "gadoxetic acid-enhanced MRI", "cohort"),
    ("Research progress of radiomics in gastrointestinal stromal tumors",
     "", "gastrointestinal stromal tumors", "CT", "review"),
    ("Habitat imaging of intratumoral heterogeneity on contrast-enhanced CT predicts survival in gastric cancer",
     "prediction of overall survival", "gastric cancer", "contrast-enhanced CT", "cohort"),
    ("Machine learning models based on dual-energy CT for differentiating gastric schwannoma from gastrointestinal stromal tumor",
     "differentiation of gastric schwannoma from gastrointestinal stromal tumor", "gastric submucosal tumors", "dual-energy CT", "cohort"),
    ("Clinical-radiomics model for predicting early recurrence of pancreatic ductal adenocarcinoma",
     "prediction of early recurrence", "pancreatic ductal adenocarcinoma", "contrast-enhanced CT", "cohort"),
)  # fmt: skip


def _author(rng: np.random.Generator) -> str:
    given = PUB_GIVEN[int(rng.integers(0, len(PUB_GIVEN)))]
    return f"{given} {PUB_SURNAMES[int(rng.integers(0, len(PUB_SURNAMES)))]}"


def _abstract(paper: tuple[str, ...], grants: list[str], rng: np.random.Generator) -> str:
    _, aim, population, modality, kind = paper
    funding = f" This work was supported by NSFC grant {' and '.join(grants)}." if grants else ""
    if kind == "review":
        return (
            "Radiomics extracts high-throughput quantitative features from medical images and "
            "captures tumor heterogeneity that is difficult to discern with the human eye. This "
            f"article reviews the workflow of radiomics and its research progress in {population}, "
            "including diagnosis, risk stratification, prediction of molecular features and "
            f"prognosis, and discusses its limitations and prospects.{funding}"
        )
    if kind == "phantom":
        scanners = int(rng.integers(4, 9))
        share = float(rng.uniform(0.25, 0.45))
        return (
            "Objective:To evaluate the reproducibility of radiomic features across CT scanners and "
            f"reconstruction kernels.Methods:A texture phantom was scanned on {scanners} CT scanners "
            "from four vendors with routine abdominal protocols and reconstructed with soft-tissue and "
            "sharp kernels. Features were extracted with PyRadiomics and their agreement was assessed "
            f"with the concordance correlation coefficient (CCC).Results:Only {share:.1%} of the "
            "features reached a CCC above 0.90 across scanners; first-order features were the most "
            "reproducible and texture features the most kernel dependent.Conclusions:Harmonization of "
            f"acquisition and reconstruction is required before multicenter radiomics studies.{funding}"
        )
    n_total = int(rng.integers(120, 700))
    centers = int(rng.integers(2, 5))
    auc = sorted((float(v) for v in rng.uniform(0.70, 0.90, size=3)), reverse=True)
    return (
        f"Objective:To develop and validate a {modality}-based radiomics model for the {aim} in "
        f"patients with {population}.Methods:The data of {n_total} patients with {population} "
        f"confirmed by pathology were retrospectively collected from {centers} medical centers and "
        f"divided into a training cohort ({n_total // 2} cases) and validation cohorts. Radiomic "
        f"features were extracted from {modality} images and selected with the least absolute "
        "shrinkage and selection operator (LASSO).Results:The model achieved area under the curve "
        f"(AUC) of {auc[0]:.3f}, {auc[1]:.3f} and {auc[2]:.3f} in the training, internal validation "
        "and external validation cohorts, respectively.Conclusions:The model can noninvasively "
        f"support individualized treatment decisions for patients with {population}.{funding}"
    )


def _write_publications(path: Path, grant_years: dict[str, int], seed: int) -> dict[str, int]:
    """About ten papers in the seed export's format: numbered title, authors, citation, abstract."""
    rng = np.random.default_rng([seed, 6])
    lead = "Jianhua LIN"  # the group's PI, last author of most papers
    cited = list(grant_years)  # grants the papers acknowledge, with their approval year
    papers = []
    for p, paper in enumerate(PAPERS):
        authors = [_author(rng) for _ in range(int(rng.integers(3, 9)))]
        if rng.random() < 0.85:
            authors.append(lead)
        # every other paper of the first eight acknowledges one of the cited grants
        grants = [cited[(p // 2) % len(cited)]] if cited and p < 8 and p % 2 == 0 else []
        if p == 0 and len(cited) > 1:
            grants.append(cited[1])  # the flagship paper acknowledges two grants
        first_year = max([2017, *(grant_years[g] + 2 for g in grants)])  # papers follow grants
        year = int(rng.integers(first_year, 2024))
        journal, first_volume = JOURNALS[int(rng.integers(0, len(JOURNALS)))]
        first_page = int(rng.integers(100, 1200))
        citation = (
            f"{journal} {year};{first_volume + year - 2016}({int(rng.integers(1, 13))}):"
            f"{first_page}-{first_page + int(rng.integers(4, 10))}"
        )
        abstract = _abstract(paper, grants, rng)
        papers.append((paper[0], " ; ".join(dict.fromkeys(authors)), citation, abstract))
    order = list(rng.permutation(len(papers)))
    repeated = int(order[1])
    order.insert(int(rng.integers(3, len(order))), repeated)  # one paper exported twice
    no_authors = int(next(p for p in order[::-1][1:] if p != repeated))  # like the seed's record 8
    lines = []
    for number, p in enumerate(order, start=1):
        title, authors, citation, abstract = papers[int(p)]
        lines.append(f"{number}.{title}")
        if int(p) != no_authors:
            lines.append(authors)
        lines += [citation, abstract]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n\n" + "\n".join(CHROME_LINES), encoding="utf-8")
    return {"publication_records": len(order), "publication_duplicates": 1}
