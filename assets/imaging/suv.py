"""PET in SUV (body weight) from the series' own DICOM tags.

The rule is QIBA's vendor-neutral SUV pseudo-code (QIBA FDG-PET/CT technical committee, "SUV
calculation", qibawiki.rsna.org, also implemented by MIRP's ``suv.py``, which
``tests/test_pet_suv.py`` compares against):

- Units (0054,1001) ``GML``: the values already are SUVbw (factor 1).
- Units ``BQML``, CorrectedImage (0028,0051) with ``ATTN`` and ``DECY``:
  ``SUVbw = value * weight_kg * 1000 / decayed_dose`` with
  ``decayed_dose = RadionuclideTotalDose * 2 ** (-decay_seconds / RadionuclideHalfLife)``;
  DecayCorrection (0054,1102) ``START``: decay from the injection
  (RadiopharmaceuticalStartDateTime, else SeriesDate + RadiopharmaceuticalStartTime) to the scan
  start (SeriesDate + SeriesTime, which must not be after the earliest AcquisitionTime);
  ``ADMIN``: the values are decay corrected to the injection already (no decay term).
- Units ``CNTS`` with the Philips SUV scale factor (7053,1000): that factor.

Anything else is ``pet_suv_missing_tag`` (the reason names the tag) or ``pet_suv_unsupported``
(names the value). Only pydicom, imported inside the functions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from assets.imaging.dicom_header import ImagingError

SUV_UNIT = "SUVbw"
_TAGS = [
    "Modality",
    "Units",
    "CorrectedImage",
    "DecayCorrection",
    "PatientWeight",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "RadiopharmaceuticalInformationSequence",
]


@dataclass(frozen=True)
class SuvFactor:
    factor: float  # multiply the stored values (after rescale slope/intercept) by this
    units: str  # what the series stored: GML, BQML, CNTS
    note: str  # how it was computed, for the cases table


def _missing(tag: str, keyword: str) -> ImagingError:
    return ImagingError(
        "pet_suv_missing_tag",
        f"is PET without {keyword} {tag}, needed for SUV (body weight); export it with the tag",
    )


def _datetime(date: str | None, time: str | None) -> dt.datetime | None:
    if not date or not time:
        return None
    text = str(time).strip()
    whole, _, fraction = text.partition(".")
    whole = whole.ljust(6, "0")[:6]
    try:
        value = dt.datetime.strptime(f"{str(date).strip()[:8]}{whole}", "%Y%m%d%H%M%S")
    except ValueError:
        return None
    if fraction.strip().isdigit():
        value += dt.timedelta(seconds=float(f"0.{fraction.strip()}"))
    return value


def _dt_value(text: str | None) -> dt.datetime | None:
    """A DICOM DT value (YYYYMMDDHHMMSS.FFFFFF, offsets ignored)."""
    if not text:
        return None
    text = str(text).strip().split("+")[0].split("-")[0]
    return _datetime(text[:8], text[8:]) if len(text) >= 12 else None


def suv_factor(headers: Sequence) -> SuvFactor:
    """SUVbw factor of a PET series from its headers (pydicom datasets; the first carries the
    series tags, all are searched for the earliest AcquisitionTime)."""
    first = headers[0]
    units = str(first.get("Units", "") or "").strip().upper()
    if not units:
        raise _missing("(0054,1001)", "Units")
    if units == "GML":
        return SuvFactor(1.0, units, "stored as SUVbw (Units GML)")
    if units == "CNTS":
        scale = first.get((0x7053, 0x1000))
        if scale is None:
            raise _missing("(7053,1000)", "the Philips SUV scale factor for Units CNTS,")
        return SuvFactor(float(scale.value), units, "Philips SUV scale factor (7053,1000)")
    if units != "BQML":
        raise ImagingError(
            "pet_suv_unsupported", f"is PET in Units {units!r}; SUV needs BQML, GML or CNTS"
        )
    corrected = {str(v).strip().upper() for v in (first.get("CorrectedImage") or [])}
    if not {"ATTN", "DECY"} <= corrected:
        raise ImagingError(
            "pet_suv_unsupported",
            f"is PET whose CorrectedImage (0028,0051) lacks {sorted({'ATTN', 'DECY'} - corrected)}; "
            "SUV needs attenuation- and decay-corrected values",
        )
    weight = first.get("PatientWeight")
    if weight in (None, "") or float(weight) <= 0:
        raise _missing("(0010,1030)", "PatientWeight")
    info = (first.get("RadiopharmaceuticalInformationSequence") or [None])[0]
    if info is None:
        raise _missing("(0054,0016)", "RadiopharmaceuticalInformationSequence")
    dose, half_life = info.get("RadionuclideTotalDose"), info.get("RadionuclideHalfLife")
    if dose in (None, "") or float(dose) <= 0:
        raise _missing("(0018,1074)", "RadionuclideTotalDose")
    if half_life in (None, "") or float(half_life) <= 0:
        raise _missing("(0018,1075)", "RadionuclideHalfLife")
    correction = str(first.get("DecayCorrection", "") or "").strip().upper()
    if not correction:
        raise _missing("(0054,1102)", "DecayCorrection")
    weight_g = float(weight) * 1000.0
    if correction == "ADMIN":
        return SuvFactor(
            weight_g / float(dose), units, "BQML decay corrected to administration (ADMIN)"
        )
    if correction != "START":
        raise ImagingError(
            "pet_suv_unsupported",
            f"is PET with DecayCorrection {correction!r}; SUV needs START or ADMIN",
        )
    scan = _datetime(first.get("SeriesDate"), first.get("SeriesTime"))
    if scan is None:
        raise _missing("(0008,0021)/(0008,0031)", "SeriesDate/SeriesTime")
    injection = _dt_value(info.get("RadiopharmaceuticalStartDateTime")) or _datetime(
        first.get("SeriesDate"), info.get("RadiopharmaceuticalStartTime")
    )
    if injection is None:
        raise _missing("(0018,1078)/(0018,1072)", "RadiopharmaceuticalStartDateTime/StartTime")
    acquisitions = [
        a
        for a in (_datetime(h.get("AcquisitionDate"), h.get("AcquisitionTime")) for h in headers)
        if a is not None
    ]
    if acquisitions and scan > min(acquisitions):
        raise ImagingError(
            "pet_suv_unsupported",
            f"is PET whose SeriesTime is {(scan - min(acquisitions)).total_seconds():.0f} s after "
            "its first AcquisitionTime (a post-processed series): the scan start is unknown",
        )
    decay = (scan - injection).total_seconds()
    if decay < 0:
        raise ImagingError(
            "pet_suv_unsupported",
            f"is PET whose injection is {-decay:.0f} s after the scan start; check the times",
        )
    decayed = float(dose) * 2.0 ** (-decay / float(half_life))
    return SuvFactor(
        weight_g / decayed, units, f"BQML, decay START: {decay:.0f} s from injection to scan"
    )


def read_pet_headers(files: Sequence[Path]) -> list:
    """The headers SUV needs (first file whole but pixels; the rest only AcquisitionDate/Time)."""
    import pydicom

    first = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    rest = [
        pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=_TAGS[6:8])
        for f in files[1:]
    ]
    return [first, *rest]
