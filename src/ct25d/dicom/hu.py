"""Does an image hold Hounsfield units at all? Checked per file at scan time, from the header alone.

An image of another modality does not. And Modality=CT is not enough: archives hold secondary
captures (dose screens, 3D renderings, key images) whose pixels are rendered grey levels or colour,
and a converter that trusts Modality turns them into "HU" that later stages take for anatomy. Each
reason names the tag and its value.

CT reformats (ImageType DERIVED\\SECONDARY\\REFORMATTED stored as CT Image Storage with a 16-bit
HU rescale) are real volumes and pass: only secondary captures, colour or palette images, ranges
that cannot hold CT values, and derived maps (ImageType PERFUSION\\RCBF, SUBTRACTION...) whose
RescaleType says their units are not HU are refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from ct25d.dicom.choice import non_anatomical
from ct25d.dicom.headers import SliceHeader
from ct25d.dicom.pixels import Rescale

# Secondary Capture Image Storage and its multi-frame variants (PS3.4 B.5) all start with this.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
# A head CT spans air (-1000) to dense bone (> +1000); a stored range narrower than this cannot hold it.
REQUIRED_HU = (-1000.0, 1000.0)
CT_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")  # CT, Enhanced CT


def rescale_of(h: SliceHeader) -> Rescale:
    """How the header's stored values become HU."""
    return Rescale(h.rescale_slope, h.rescale_intercept, h.bits_stored, h.pixel_representation,
                   h.photometric == "MONOCHROME1")  # fmt: skip


def hu_problem(h: SliceHeader) -> str:
    """Why the image cannot hold HU ("" if it can)."""
    if h.modality != "CT":
        return f"Modality {h.modality or '(none)'}: not CT"
    if h.samples_per_pixel != 1:
        return f"SamplesPerPixel {h.samples_per_pixel} ({h.photometric}): a colour rendering, not HU"
    if h.photometric not in GREYSCALE:
        return f"PhotometricInterpretation {h.photometric}: not a greyscale image, not HU"
    if h.sop_class.startswith(SECONDARY_CAPTURE):
        return f"SOPClassUID {h.sop_class} (Secondary Capture): rendered grey levels, not HU"
    image_type = [v.strip().upper() for v in h.image_type.split("\\")]
    if image_type[:2] == ["DERIVED", "SECONDARY"] and h.sop_class not in CT_STORAGE:
        return (
            f"ImageType {h.image_type} in a non-CT SOP class ({h.sop_class or 'none'}): a secondary capture"
        )
    kind = (h.rescale_type or "").upper()
    if kind not in ("", "HU") and non_anatomical(h.image_type):
        return f"RescaleType {kind} with ImageType {h.image_type}: a derived map in its own units, not HU"
    low, high = rescale_of(h).hu_bounds()
    if low > REQUIRED_HU[0] or high < REQUIRED_HU[1]:
        return (
            f"BitsStored {h.bits_stored} (PixelRepresentation {h.pixel_representation}) with RescaleSlope "
            f"{h.rescale_slope:g} and RescaleIntercept {h.rescale_intercept:g} holds only {low:g}..{high:g}: "
            f"cannot hold CT values ({REQUIRED_HU[0]:g}..{REQUIRED_HU[1]:g} HU)"
        )
    return ""


def rescale_type_flag(headers: Sequence[SliceHeader]) -> str:
    """A flag for a series whose RescaleType is not HU ("" when it is HU or absent, which means HU).

    The image is anatomical (`hu_problem` refused derived maps in other units), so it is kept, but a
    user should know the header does not promise HU.
    """
    kinds = sorted({(h.rescale_type or "").upper() for h in headers} - {"", "HU"})
    return f"RescaleType {'/'.join(kinds)}: the header does not say HU; values kept as HU" if kinds else ""
