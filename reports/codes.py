"""Coded concepts for the PLVI reports: standard codes wherever they exist, a private scheme only where none does.

Where each code comes from
--------------------------
- From pydicom's code dictionary (PS3.16, checked in `pydicom.sr.codedict.codes`): Area (SCT 42798000),
  square millimeter (UCUM mm2), ratio (UCUM {ratio}), L4 vertebra (SCT 11994002), Left (SCT 7771000),
  Right (SCT 24028007), Yes (SCT 373066001), No (SCT 373067005), Anatomical Structure (SCT 91723000, CID 7150),
  Imaging procedure (SCT 363679005), Skeletal muscle (SCT 127954009), Image processing algorithm family
  (CID 7162).
- Structure of body of fourth lumbar vertebra (SCT 71996003): not in pydicom's or highdicom's dictionaries;
  taken from the AAPM TG-263 to SNOMED CT mapping (structure `VB_L4`), where the neighbouring vertebral bodies
  (55492004 for L3, 21799000 for L5) follow the same pattern.
- Psoas major muscle: no code in pydicom's or highdicom's dictionaries, and the public mappings we found disagree
  (one gives SCT 64038003, which the TG-263 mapping uses for "Intercostal lymph node"). A wrong SNOMED code is worse
  than an honest private one, so it lives in the private scheme below, with "Skeletal muscle" (SCT 127954009) as
  its standard parent in the SEG's anatomic region.

The private coding scheme `99PLVI`
----------------------------------
PS3.16 section 8.2 reserves designators beginning with "99" for private schemes. Every object that uses one
carries a Coding Scheme Identification Sequence item (`coding_scheme_identification()`) naming it.

=============  ==========================================  ===========================================
Code value     Code meaning                                Used as
=============  ==========================================  ===========================================
PSOAS-MAJOR    Psoas major muscle                          finding type / segmented property type
PLVI           Psoas to L4 vertebral index                 measurement name (unit {ratio})
PLVI-CUTOFF    PLVI cut-off for low psoas mass             measurement name (unit {ratio})
LOW-PSOAS      Low psoas mass                              qualitative evaluation name (Yes / No)
STATUS         PLVI measurement status                     qualitative evaluation name
ok             Measured                                    status value
needs_review   Measured, needs review                      status value
not_measurable Not measurable                              status value
STATUS-REASON  Reason for PLVI measurement status          qualitative evaluation name
<reason word>  the reason's sentence                       reason value (`no_axial_t2`, ...)
=============  ==========================================  ===========================================
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99PLVI"
PRIVATE_SCHEME_NAME = "PLVI screening service private codes"
PRIVATE_SCHEME_UID = "2.25.146355915367457102263407356722377620811"


def _standard(code: Code) -> CodedConcept:
    return CodedConcept.from_code(code)


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


# Anatomy
PSOAS_MAJOR_MUSCLE = _private("PSOAS-MAJOR", "Psoas major muscle")
L4_VERTEBRAL_BODY = CodedConcept("71996003", "SCT", "Structure of body of fourth lumbar vertebra")
L4_VERTEBRA = _standard(codes.SCT.L4Vertebra)
SKELETAL_MUSCLE = _standard(codes.SCT.SkeletalMuscle)
ANATOMICAL_STRUCTURE = _standard(codes.SCT.AnatomicalStructure)
LEFT = _standard(codes.SCT.Left)
RIGHT = _standard(codes.SCT.Right)

# Measurements and units
AREA = _standard(codes.SCT.Area)
SQUARE_MILLIMETER = _standard(codes.UCUM.SquareMillimeter)
RATIO_UNIT = _standard(codes.UCUM.Ratio)
PLVI = _private("PLVI", "Psoas to L4 vertebral index")
PLVI_CUTOFF = _private("PLVI-CUTOFF", "PLVI cut-off for low psoas mass")

# Qualitative evaluations
LOW_PSOAS_MASS = _private("LOW-PSOAS", "Low psoas mass")
YES = _standard(codes.SCT.Yes)
NO = _standard(codes.SCT.No)
STATUS = _private("STATUS", "PLVI measurement status")
STATUS_VALUES = {
    "ok": _private("ok", "Measured"),
    "needs_review": _private("needs_review", "Measured, needs review"),
    "not_measurable": _private("not_measurable", "Not measurable"),
}
STATUS_REASON = _private("STATUS-REASON", "Reason for PLVI measurement status")

# Report framing
IMAGING_PROCEDURE = _standard(codes.SCT.ImagingProcedure)
DEVICE_OBSERVER = _standard(codes.DCM.Device)
ALGORITHM_FAMILY = _standard(codes.cid7162.MorphologicalOperations)


def status_code(status: str) -> CodedConcept:
    """The coded status; raises for a status the result object does not define."""
    try:
        return STATUS_VALUES[status]
    except KeyError:
        raise ValueError(f"result status {status!r} is not one of {sorted(STATUS_VALUES)}") from None


def reason_code(reason: str, sentence: str | None) -> CodedConcept:
    """A reason word (`no_axial_t2`, ...) as a private code; its sentence is the meaning (LO: 64 characters)."""
    meaning = (sentence or reason.replace("_", " ")).strip()[:64]
    return _private(reason, meaning)


def coding_scheme_identification() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification Sequence item that declares `99PLVI` (PS3.3 C.12.1.1.2)."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name=PRIVATE_SCHEME_NAME,
        uid=PRIVATE_SCHEME_UID,
        responsible_organization="PLVI screening service project",
    )
