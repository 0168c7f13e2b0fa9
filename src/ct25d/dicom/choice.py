"""Which of a study's series to convert: classify each as plain / contrast / bone / localizer /
derived (a perfusion map, subtraction or projection), then rank.

Real archives name series freely, and a filter on the word "contrast" drops CQ500's plain series
"CT PRE CONTRAST THIN" while "CT 4cc sec 150cc D3D on" (a contrast study) passes. So every signal
is read, strongest first: ImageType, the contrast/bolus tags (when a scanner wrote them: an agent or
route with a value decides either way, so "NONE" makes a "POST" series plain), the reconstruction
kernel, then the description with word-aware rules: a plain phrase ("PRE CONTRAST",
"NON CONTRAST", "W/O", "PLAIN", "NC") is taken out before contrast words are looked for, so "CT PRE
CONTRAST BONE" is a plain acquisition in a bone kernel, not a contrast series.

Ranking among the candidate classes (config `ingest.accept_series`, default plain only): plain
before anything else, then slice thickness closest to `preferred_thickness_mm`, then a soft-tissue
kernel before an unknown one, then a regular slice spacing, then more images. Each series gets a
readable `why` for the series_choice report.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

SERIES_CLASSES = ("plain", "contrast", "bone", "localizer", "derived")
ACCEPTABLE = ("plain", "contrast", "bone")  # a localizer never forms a volume; a derived map is no anatomy
# ImageType values of images computed from others that are not anatomical slices: perfusion maps,
# subtractions, projections. Their pixels may be HU (a MIP) or not (a blood-flow map in ml/100 ml/min).
NON_ANATOMICAL = ("PERFUSION", "RCBF", "RCBV", "MTT", "TTP", "TMAX", "SUBTRACTION", "MIP", "MINIP")

# Phrases that mean "no contrast", removed from a description before contrast words are looked for.
_PLAIN = re.compile(
    r"\b(PRE|NON|NO|WITHOUT|W/?O|SANS|OHNE)[\s_\-]*(CONTRAST|CON|KM|IV|C)\b"
    r"|\b(PLAIN|NATIVE?|UNENHANCED|NCCT|NECT|NC|NCT)\b"
)
_CONTRAST = re.compile(
    r"\b(POST|WITH|W)[\s_/\-]*(CONTRAST|CON|KM|IV|C)\b"
    r"|\bCONTRAST\b|\bCECT\b|\bCE\b|\bCTA\b|\bANGIO\w*|\bENHANCED\b|\bC\+"
    r"|\bARTERIAL\b|\bVENOUS\b|\bPORTAL\b|\bDELAYED\b|\bPERFUSION\b"
    r"|\bIV\b"  # "CT ORAL IV", "10cc IV"; "NO IV" and "W/O IV" are plain phrases, taken out first
    # a bare POST, but not the posterior fossa or the time after an operation or injury
    r"|\bPOST\b(?![\s_\-]*(FOSSA|OP|OPERATIVE|OPERATION|SURG\w*|CRANI\w*|TRAUMA\w*|ICTAL|MORTEM)\b)"
    r"|\b\d+(\.\d+)?\s*(CC|ML)\b"  # contrast volumes, e.g. "4cc sec 150cc"
)
_LOCALIZER = re.compile(r"\b(SCOUT|LOCALI[SZ]ER|TOPOGRAM|SURVIEW|SCANOGRAM|SCOUTVIEW|PILOT)\b")
_BONE_WORDS = re.compile(r"\b(BONE|BONEPLUS|OSSEOUS|LUNG|EDGE|SHARP)\b")
_NO_VALUE = {"", "NONE", "NO", "N", "N/A", "NA", "0", "-", "NIL", "NOT APPLIED", "NO CONTRAST"}
# Reconstruction kernels by vendor convention: sharp (bone/lung) or smooth (soft tissue, brain).
_SHARP_KERNELS = {"BONE", "BONEPLUS", "EDGE", "LUNG", "YC", "YD", "YE", "E", "D", "L", "FC30",
                  "FC31", "FC35", "FC50", "FC51", "FC52", "FC53", "FC81", "FC82", "FC83", "FC86"}  # fmt: skip
_SOFT_KERNELS = {"STANDARD", "SOFT", "BRAIN", "HEAD", "UB", "UC", "B", "C", "CB", "A", "FC20", "FC21", "FC22",
                 "FC23", "FC24", "FC25", "FC26", "FC27"}  # fmt: skip
_SIEMENS_KERNEL = re.compile(r"^[A-Z][A-Z]?(\d{2})[A-Z]?(\\\d)?$")  # H40s, Hr38, J70h, Br64\3


def kernel_kind(kernel: str) -> str:
    """`sharp`, `soft` or `unknown` for a ConvolutionKernel value."""
    text = kernel.strip().upper().replace(" ", "")
    if not text:
        return "unknown"
    first = text.split("\\")[0]
    if first in _SHARP_KERNELS or any(w in text for w in ("BONE", "LUNG", "SHARP", "EDGE")):
        return "sharp"
    if first in _SOFT_KERNELS or any(w in text for w in ("SOFT", "BRAIN", "STANDARD")):
        return "soft"
    match = _SIEMENS_KERNEL.match(first)
    if match:  # Siemens: the number is the sharpness; 60 and above are bone kernels
        return "sharp" if int(match.group(1)) >= 60 else "soft"
    return "unknown"


def non_anatomical(image_type: str) -> list[str]:
    """The values of an ImageType (`A\\B\\C`) that name a derived map or projection."""
    return [v for v in (t.strip().upper() for t in image_type.split("\\")) if v in NON_ANATOMICAL]


def has_value(text: str) -> bool:
    """Whether a contrast tag's value records an injection ("NONE", "NO", "0" do not)."""
    return text.strip().upper() not in _NO_VALUE


# Tags whose explicit "no" (NONE, NO, 0...) settles the contrast question, over any description word.
_DECIDING_TAGS = ("ContrastBolusAgent", "ContrastBolusRoute")


def _tag_says_none(contrast_agent: str, contrast_tags: str) -> str:
    """`ContrastBolusAgent 'NONE'` when a deciding tag records no contrast; "" when none says so (an
    empty value says nothing)."""
    values = {key: value for key, _, value in (t.partition("=") for t in contrast_tags.split("; ") if t)}
    values["ContrastBolusAgent"] = contrast_agent
    return next((f"{k} {values[k]!r}" for k in _DECIDING_TAGS
                 if values.get(k, "").strip() and not has_value(values[k])), "")  # fmt: skip


@dataclass(frozen=True)
class SeriesClass:
    """A series' class and the signal that decided it."""

    kind: str
    why: str


def classify(description: str, image_types: list[str], kernel: str, contrast_agent: str,
             contrast_tags: str) -> SeriesClass:  # fmt: skip
    """Classify one series from its description, ImageType values, kernel and contrast tags."""
    text = description.upper()
    if any("LOCALIZER" in t.upper().split("\\") for t in image_types):
        return SeriesClass("localizer", "ImageType LOCALIZER")
    if _LOCALIZER.search(text):
        return SeriesClass("localizer", f"description {description!r} names a scout/localizer")
    derived = next((t for t in image_types if non_anatomical(t)), "")
    if derived:
        names = "/".join(non_anatomical(derived))
        return SeriesClass(
            "derived", f"ImageType {derived}: {names} is a derived map or projection, not anatomy"
        )
    if has_value(contrast_agent):
        return SeriesClass("contrast", f"ContrastBolusAgent {contrast_agent!r}")
    recorded = [t for t in contrast_tags.split("; ") if t and has_value(t.partition("=")[2])]
    if recorded:
        return SeriesClass("contrast", f"contrast tag {recorded[0]}")
    said_none = _tag_says_none(contrast_agent, contrast_tags)
    said_plain = _PLAIN.search(text)
    rest = _PLAIN.sub(" ", text)
    contrast_word = _CONTRAST.search(rest)
    word = repr(contrast_word.group(0).strip()) if contrast_word else ""
    if contrast_word and not said_none:
        return SeriesClass("contrast", f"description {description!r} says {word}")
    if kernel_kind(kernel) == "sharp":
        return SeriesClass("bone", f"ConvolutionKernel {kernel!r} is a sharp (bone/lung) kernel")
    bone_word = _BONE_WORDS.search(rest)
    if bone_word:
        return SeriesClass("bone", f"description {description!r} says {bone_word.group(0).strip()!r}")
    if said_none:
        over = f", over the description's {word}" if word else ""
        return SeriesClass("plain", f"no contrast: {said_none}{over}")
    if said_plain:
        return SeriesClass("plain", f"description {description!r} says {said_plain.group(0).strip()!r}")
    return SeriesClass("plain", "no contrast tag, contrast word or bone kernel")


_KERNEL_ORDER = {"soft": 0, "unknown": 1, "sharp": 2}


def _why_lost(loser: pd.Series, winner: pd.Series, preferred: float) -> str:
    """The first ranking key on which `loser` comes after `winner`."""
    if winner["override"]:
        return "the override file names another series"
    if loser["class_order"] != winner["class_order"]:
        return f"{loser['series_class']} series ranks after {winner['series_class']}"
    if loser["fit"] != winner["fit"]:
        return (f"thickness {loser['slice_thickness']:g} mm is further from {preferred:g} mm than "
                f"{winner['slice_thickness']:g} mm")  # fmt: skip
    if loser["kernel_order"] != winner["kernel_order"]:
        return (
            f"{loser['kernel_kind']} kernel {loser['kernel']!r} ranks after "
            f"{winner['kernel_kind']} {winner['kernel']!r}"
        )
    if loser["irregular"] != winner["irregular"]:
        return "irregular slice spacing"
    if loser["n_files"] != winner["n_files"]:
        return f"{loser['n_files']} images against {winner['n_files']}"
    return "same on every key; name order"


def rank_series(series: pd.DataFrame, preferred: float, accept: Sequence[str]) -> pd.DataFrame:
    """`series` with `rank` (0 = first choice, -1 = no candidate) and `why`, a sentence per series.

    A series whose class is not in `accept` is excluded with its class as the reason, unless the
    override file chose it (`override` column).
    """
    series = series.copy()
    if "override" not in series:
        series["override"] = False
    unaccepted = (series["excluded"] == "") & ~series["series_class"].isin(accept) & ~series["override"]
    series.loc[unaccepted, "excluded"] = (
        series.loc[unaccepted, "series_class"] + " series (" + series.loc[unaccepted, "class_why"] + ")"
    )
    ok = series["excluded"] == ""
    order = {c: i for i, c in enumerate(accept)}
    series["class_order"] = series["series_class"].map(order).fillna(len(order)).astype(int)
    series["fit"] = (series["slice_thickness"] - preferred).abs().round(3)
    series["kernel_order"] = series["kernel_kind"].map(_KERNEL_ORDER)
    series["irregular"] = series["geometry_flags"].str.contains("irregular", regex=False)
    keys = ["study_id", "override", "class_order", "fit", "kernel_order", "irregular", "n_files", "unit"]
    candidates = series[ok].sort_values(keys, ascending=[True, False, True, True, True, True, False, True])
    series["rank"] = candidates.groupby("study_id").cumcount().reindex(series.index).fillna(-1).astype(int)
    series["listed"] = series["rank"].where(ok, len(series))  # candidates by rank, then the others
    series = series.sort_values(["study_id", "listed", "unit"], ignore_index=True)
    winners = series[series["rank"] == 0].set_index("study_id")
    whys = []
    for _, row in series.iterrows():
        if row["rank"] < 0:
            whys.append(f"not a candidate: {row['excluded']}")
        elif row["rank"] == 0:
            chosen = (
                "chosen by the override file"
                if row["override"]
                else f"{row['series_class']} ({row['class_why']})"
            )
            whys.append(f"first choice: {chosen}; thickness {row['slice_thickness']:g} mm; "
                        f"{row['kernel_kind']} kernel {row['kernel']!r}")  # fmt: skip
        else:
            whys.append(f"rank {row['rank']}: {_why_lost(row, winners.loc[row['study_id']], preferred)}")
    series["why"] = whys
    return series.drop(columns=["class_order", "fit", "kernel_order", "irregular", "listed"])
