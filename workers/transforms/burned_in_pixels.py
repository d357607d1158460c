"""Burned-in text (PS3.15 E.1-1: the profile does not address it): an instance whose
BurnedInAnnotation is YES is refused (BurnedInAnnotationRefused: a dead letter) unless
burned_in_annotation is "send", and so is one whose RecognizableVisualFeatures is YES (a
face in a photograph or a 3D rendering: the pixels identify the patient as text would).
One without the attribute whose class often carries such text (ultrasound, secondary
capture, documents, photographs and video) is de-identified and noted (BurnedInNote), for
the delivery to count and route-test to show.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from router.core.deid_spec import DeidentifyConfig

# Classes that often carry text in their pixels without saying so (BurnedInAnnotation absent),
# by the kind of note they get: by Modality, then by SOP class.
_SUSPECT_MODALITIES = {"US": "ultrasound", "IVUS": "ultrasound", "SC": "secondary_capture",
                       "OT": "secondary_capture", "DOC": "document", "XC": "photo_video",
                       "ES": "photo_video", "GM": "photo_video"}
_SUSPECT_CLASSES = {
    **dict.fromkeys(("1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6.2",
                     "1.2.840.10008.5.1.4.1.1.3.1"), "ultrasound"),
    **dict.fromkeys(("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1",
                     "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",
                     "1.2.840.10008.5.1.4.1.1.7.4"), "secondary_capture"),
    **dict.fromkeys(("1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.104.2"),
                    "document"),
    **dict.fromkeys(("1.2.840.10008.5.1.4.1.1.77.1.1", "1.2.840.10008.5.1.4.1.1.77.1.1.1",
                     "1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.4.1"),
                    "photo_video")}
BURNED_IN_REFUSED = (
    "burned-in annotation: pixel data may identify the patient (BurnedInAnnotation YES), "
    "and de-identification removes attributes, not text in the pixels; not sent. Once the "
    "pixels are cleaned, or if this destination may receive them, set "
    "burned_in_annotation: send in its deidentify settings and replay it")
RECOGNIZABLE_REFUSED = (
    "recognizable visual features: pixel data may identify the patient "
    "(RecognizableVisualFeatures YES: a face, a 3D rendering), and de-identification removes "
    "attributes, not what the pixels show; not sent. If this destination may receive them, "
    "set burned_in_annotation: send in its deidentify settings and replay it")


class BurnedInAnnotationRefused(ValueError):
    """BurnedInAnnotation YES under burned_in_annotation: refuse (a dead letter)."""


@dataclass(frozen=True)
class BurnedInNote:
    """A de-identified instance whose pixels may still identify the patient."""

    kind: str  # bounded (a metric label): "annotated", "recognizable" or a _SUSPECT_CLASSES kind
    text: str


def burned_in(ds: Dataset, config: DeidentifyConfig) -> BurnedInNote | None:
    """Raises BurnedInAnnotationRefused when the config refuses this instance."""
    said = str(ds.get("BurnedInAnnotation") or "").strip().upper()
    if said == "YES":
        if config.burned_in_annotation == "refuse":
            raise BurnedInAnnotationRefused(BURNED_IN_REFUSED)
        return BurnedInNote("annotated", "BurnedInAnnotation YES: sent with its pixels as "
                            "they are (burned_in_annotation: send); they may identify the "
                            "patient")
    if _yes(ds, "RecognizableVisualFeatures"):
        if config.burned_in_annotation == "refuse":
            raise BurnedInAnnotationRefused(RECOGNIZABLE_REFUSED)
        return BurnedInNote("recognizable", "RecognizableVisualFeatures YES: sent with its "
                            "pixels as they are (burned_in_annotation: send); they may "
                            "identify the patient")
    kind = None if said else (_SUSPECT_MODALITIES.get(str(ds.get("Modality") or "").upper())
                              or _SUSPECT_CLASSES.get(str(ds.get("SOPClassUID") or "")))
    if kind is None:
        return None
    return BurnedInNote(kind, f"no BurnedInAnnotation, and {kind.replace('_', ' ')} "
                        f"instances often have text in their pixels: sent")


def _yes(ds: Dataset, keyword: str) -> bool:
    return str(ds.get(keyword) or "").strip().upper() == "YES"
