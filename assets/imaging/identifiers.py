"""Keyed ids and identifier scrubbing: what the lake stores instead of identifying values.

Split from ``layout`` (which re-exports all of it) because the scan's header workers need it:
this module imports only ``os`` and ``re``, so a worker process starts in a few milliseconds.

- stable keyed ids (``file_key``, ``dicom_series_id``, ``case_id_for``) made with the lake's
  pseudonymizer (HMAC with the lake secret): a SeriesInstanceUID is not a patient identifier, but
  it can be looked up in the hospital PACS, so it is not stored raw nor as a plain hash;
- ``identifier_tokens`` and the ``Scrubber`` that replaces identifier-bearing path components by
  the patient_key before a path is stored; ``scrub_text`` for free-text header values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

VOLUME_SUFFIXES = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd"}

Pseudonymize = Callable[[str, object], str]


def split_volume_name(name: str) -> tuple[str, str]:
    """('brain1_image', '.nrrd') for a volume file name; (name, '') otherwise."""
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


# --- ids -------------------------------------------------------------------------------------
def file_key(pseudonymize: Pseudonymize, center_id: str, rel: str) -> str:
    """Keyed digest of a landed file's path: how the scan index names a file without its path."""
    return pseudonymize(center_id, f"file\x1f{rel}")


def dicom_series_id(pseudonymize: Pseudonymize, center_id: str, series_uid: str) -> str:
    return pseudonymize(center_id, f"dicom-series\x1f{series_uid}")


def volume_series_id(pseudonymize: Pseudonymize, center_id: str, rel: str) -> str:
    return pseudonymize(center_id, f"volume\x1f{rel}")


def case_id_for(
    pseudonymize: Pseudonymize, center_id: str, image_rel: str, mask_rel: str, label: object
) -> str:
    label_text = "" if label is None else str(label)
    return pseudonymize(center_id, f"case\x1f{image_rel}\x1f{mask_rel}\x1f{label_text}")


# --- identifier scrubbing --------------------------------------------------------------------
_NON_ALNUM = re.compile(r"[^0-9a-z\u3400-\u9fff]")  # Chinese characters are kept
_KEY_COMPONENT = re.compile(r"^(redacted|[0-9a-f]{32})(\.[A-Za-z0-9.]+)?$")
MIN_CONTAINED = 3  # identifiers shorter than this only match a whole path component


def _contained_ok(token: str) -> bool:
    """Long enough to be looked for inside a path component: 3+ characters, or a Chinese name of
    2 (张伟 is as specific as a Latin name of 6)."""
    return len(token) >= MIN_CONTAINED or (len(token) == 2 and not token.isascii())


def normalize_token(text: str) -> str:
    return _NON_ALNUM.sub("", str(text).lower())


def identifier_tokens(*values: object) -> set[str]:
    """Normalized identifier strings to look for in paths.

    Each value whole (found anywhere inside a path component), each component group of a DICOM
    person name whole (``Zhang^Wei=张^伟``: ``zhangwei`` and ``张伟``), and each part of a person
    name of 3+ characters as a ``w:`` word token (only equal to a whole word of a component: a
    given name such as 'Jun' must not wipe out 'junk.txt').
    """
    tokens: set[str] = set()
    for value in values:
        if value is None:
            continue
        text = str(value).strip()
        if not text:
            continue
        whole = normalize_token(text)
        if whole:
            tokens.add(whole)
        groups = [normalize_token(g) for g in text.split("=")]  # PN: alphabetic=ideographic=...
        tokens.update(g for g in groups if g and len(groups) > 1)
        parts = [normalize_token(p) for p in re.split(r"[\^\s,=]+", text)]  # PN: Family^Given^...
        if len(parts) > 1:
            tokens.update(f"w:{p}" for p in parts if len(p) >= MIN_CONTAINED)
    return tokens


def _words(component: str) -> list[str]:
    return [w for w in re.split(r"[^0-9a-z\u3400-\u9fff]+", component.lower()) if w]


class Scrubber:
    """Replaces path components that contain a known identifier by that patient's key.

    Tokens are kept as ``key_fn(token)``: the identity for identifiers in memory, or a keyed digest
    (``digest_fn``) so an incremental index can remember identifiers without storing them
    (``token_digests`` / ``add_digests``).
    """

    def __init__(self, key_fn: Callable[[str], str] | None = None):
        self._key = key_fn or (lambda token: token)
        self._plain = key_fn is None  # tokens kept as they are: search them directly
        self._contained: dict[str, str] = {}
        self._words: dict[str, str] = {}
        self._lengths: set[int] = set()
        self._cache: dict[str, str | None] = {}
        self._folders: dict[tuple[str, int], str] = {}  # scrubbed folders (files share them)
        self._any: re.Pattern | None = None  # plain tokens: one search says "no identifier"

    def __bool__(self) -> bool:
        return bool(self._contained or self._words)

    def add(self, tokens: Iterable[str], replacement: str) -> None:
        for token in tokens:
            if token.startswith("w:"):
                self._words.setdefault(self._key(token), replacement)
            elif token:
                self._contained.setdefault(self._key(token), replacement)
                self._lengths.add(len(token))
        self._forget()

    def _forget(self) -> None:
        self._cache.clear()
        self._folders.clear()
        self._any = None

    def add_digests(self, entries: Iterable[str], replacement: str) -> None:
        """Entries from ``token_digests`` made with the same ``key_fn``."""
        for entry in entries:
            kind, _, key = entry.partition(":")
            if kind == "w":
                self._words.setdefault(key, replacement)
            elif kind.isdigit() and key:
                self._contained.setdefault(key, replacement)
                self._lengths.add(int(kind))
        self._forget()

    def match(self, component: str) -> str | None:
        """The replacement for a path component that carries an identifier, else None."""
        if component in self._cache:
            return self._cache[component]
        norm = normalize_token(component)
        if self._plain:
            # every match below (a word, a stem, a contained token) is a substring of ``norm``:
            # one regex search over all tokens rules out the common case, a clean name
            if self._any is None:
                words = {t[2:] if t.startswith("w:") else t for t in self._words}
                plain = sorted(words | set(self._contained), key=len, reverse=True)
                self._any = re.compile("|".join(map(re.escape, plain)) or "(?!)")
            if not self._any.search(norm):
                self._cache[component] = None
                return None
        found = None
        if self._words:
            found = next(
                (
                    self._words[k]
                    for k in map(self._key, (f"w:{w}" for w in _words(component)))
                    if k in self._words
                ),
                None,
            )
        stem = normalize_token(split_volume_name(component)[0].rsplit(".", 1)[0])
        if self._plain and not found:  # a few plain tokens: substring search, longest first
            for token in sorted(self._contained, key=len, reverse=True):
                if token in (norm, stem) or _contained_ok(token) and token in norm:
                    found = self._contained[token]
                    break
            self._cache[component] = found
            return found
        for length in sorted(self._lengths, reverse=True):
            if found:
                break
            if length < MIN_CONTAINED:
                candidates = {n for n in (norm, stem) if len(n) == length}
                candidates |= {
                    norm[i : i + length]
                    for i in range(len(norm) - length + 1)
                    if _contained_ok(norm[i : i + length])
                }
            else:
                candidates = {norm[i : i + length] for i in range(len(norm) - length + 1)}
            found = next(
                (self._contained[k] for k in map(self._key, candidates) if k in self._contained),
                None,
            )
        self._cache[component] = found
        return found

    def scrub(self, rel: str, keep: int = 2) -> str:
        """``rel`` (relative to landing/) with identifier components replaced; the first ``keep``
        components (``imaging/<center_id>``) are kept as they are."""
        folder, slash, name = rel.rpartition("/")
        if slash and folder.count("/") >= keep - 1:  # the files of a folder share its part
            safe = self._folders.get((folder, keep))
            if safe is None:
                safe = self._folders[(folder, keep)] = self._scrub(folder, keep, last=False)
            return f"{safe}/{self._scrub(name, 0, last=True)}"
        return self._scrub(rel, keep, last=True)

    def _scrub(self, rel: str, keep: int, last: bool) -> str:
        parts = rel.split("/")
        out = parts[:keep]
        for index, part in enumerate(parts[keep:], start=keep):
            if _KEY_COMPONENT.match(part):  # already a patient_key: leave it
                out.append(part)
                continue
            replacement = self.match(part)
            if replacement is None:
                out.append(part)
            else:
                is_file = last and index == len(parts) - 1
                out.append(replacement + (_file_suffix(part) if is_file else ""))
        return "/".join(out)


def _file_suffix(name: str) -> str:
    """The extension to keep on a replaced file name ('.nii.gz', '.dcm'), '' if none."""
    volume = split_volume_name(name)[1]
    if volume:
        return volume
    suffix = os.path.splitext(name)[1]
    return suffix if 1 < len(suffix) <= 6 and suffix[1:].isalpha() else ""


def digest_fn(pseudonymize: Pseudonymize) -> Callable[[str], str]:
    """Keyed digest of an identifier token (for remembering identifiers without storing them)."""
    return lambda token: pseudonymize("radlake", f"identifier\x1f{token}")[:24]


def token_digests(tokens: Iterable[str], digest: Callable[[str], str]) -> list[str]:
    """Storable form of identifier tokens: 'w:<digest>' for words, '<length>:<digest>' otherwise."""
    return sorted(
        f"w:{digest(t)}" if t.startswith("w:") else f"{len(t)}:{digest(t)}" for t in tokens
    )


def scrub_text(text: str | None, tokens: Iterable[str]) -> str | None:
    """A free-text header value (SeriesDescription) with any identifier token masked."""
    if text is None:
        return None
    out = text
    for token in sorted(tokens, key=len, reverse=True):
        word = token.startswith("w:")
        token = token.removeprefix("w:")
        if not _contained_ok(token) or token not in normalize_token(out):
            continue
        pattern = r"[^0-9A-Za-z]*".join(re.escape(ch) for ch in token)
        if word:  # a name part only as a whole word ('Art' must not hit 'arterial')
            pattern = rf"(?<![0-9A-Za-z]){pattern}(?![0-9A-Za-z])"
        out = re.sub(pattern, "[redacted]", out, flags=re.IGNORECASE)
    return out
