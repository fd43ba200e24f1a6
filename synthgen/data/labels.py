"""Boolean labels for evaluation and class-balanced generation, by fixed, documented rules.

Where a source has cardiologist-validated SCP codes (PTB-XL) the codes decide; its free text is not
used, because it is mostly German and mentions history ("cardioversion of atrial flutter", "previously
atrial fibrillation"), and "supraventrikuläre extrasystole" would look like a PVC to a text rule.
The PhysioNet/CinC Challenge's SNOMED CT codes (``#Dx``) decide for its records. Elsewhere (MIMIC-IV-ECG
machine reports, WFDB folders) English report text decides.

- ``af``: SCP AFIB or AFLT; SNOMED CT atrial fibrillation (164889003, and its chronic, paroxysmal and rapid
  forms 426749004, 282825002, 314208002), atrial flutter (164890007) or both (195080001); text: "atrial
  fibrillation", "atrial flutter", "afib", "a-fib".
- ``pvc``: SCP PVC; SNOMED CT 427172004, 17338001, 164884008 (CPSC's "ventricular ectopics") or 251182009
  (paired ventricular premature complexes); text: "premature ventricular", "ventricular premature", "PVC(s)",
  "ventricular extrasystole".
- ``abnormal``: not a normal ECG. SCP: normal iff the record's diagnostic statements (``diagnostic == 1``
  in scp_statements.csv) are exactly {NORM}. SNOMED CT: normal iff the only code is sinus rhythm (426783006,
  the challenge's NSR; any other finding, even sinus bradycardia, makes it abnormal). Text: normal iff a
  report says "normal ECG" (including "Otherwise normal ECG") and none says "abnormal ECG" or "borderline
  ECG". In every case ``af`` or ``pvc`` makes a record abnormal, and a record with no diagnostic statement /
  no report is abnormal (unknown is not normal).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_AF = re.compile(r"\batrial (fibrillation|flutter)\b|\ba-?fib\b", re.I)
_PVC = re.compile(r"\bpremature ventricular\b|\bventricular premature\b|\bpvcs?\b|\bventricular extrasystole",
                  re.I)
_NORMAL = re.compile(r"\bnormal (ecg|ekg|electrocardiogram)\b", re.I)
_NOT_NORMAL = re.compile(r"\b(abnormal|borderline) (ecg|ekg|electrocardiogram)\b", re.I)

AF_CODES = frozenset({"AFIB", "AFLT"})
PVC_CODES = frozenset({"PVC"})
SNOMED_AF = frozenset({"164889003", "426749004", "282825002", "314208002", "164890007", "195080001"})
SNOMED_PVC = frozenset({"427172004", "17338001", "164884008", "251182009"})
SNOMED_SINUS_RHYTHM = "426783006"


def labels_from_scp(codes: Iterable[str], diagnostic: Iterable[str]) -> dict[str, bool]:
    """``af``/``pvc``/``abnormal`` from a record's SCP codes and the subset of them that is diagnostic."""
    codes = set(codes)
    af, pvc = bool(codes & AF_CODES), bool(codes & PVC_CODES)
    return {"af": af, "pvc": pvc, "abnormal": af or pvc or set(diagnostic) != {"NORM"}}


def labels_from_snomed(codes: Iterable[str]) -> dict[str, bool]:
    """``af``/``pvc``/``abnormal`` from a PhysioNet/CinC Challenge record's SNOMED CT codes (its ``#Dx`` line)."""
    codes = set(codes)
    af, pvc = bool(codes & SNOMED_AF), bool(codes & SNOMED_PVC)
    return {"af": af, "pvc": pvc, "abnormal": af or pvc or codes != {SNOMED_SINUS_RHYTHM}}


def labels_from_text(reports: Iterable[str]) -> dict[str, bool]:
    """``af``/``pvc``/``abnormal`` from a record's English report lines."""
    reports = [r for r in reports if r]
    af = any(_AF.search(r) for r in reports)
    pvc = any(_PVC.search(r) for r in reports)
    normal = any(_NORMAL.search(r) for r in reports) and not any(_NOT_NORMAL.search(r) for r in reports)
    return {"af": af, "pvc": pvc, "abnormal": af or pvc or not normal}
