"""Synthetic head-CT cohorts written as real DICOM in the RSNA 2019 and CQ500 archive layouts."""

from ct25d.synth.cohort import BROKEN_KINDS, CohortSummary, generate_cohort

__all__ = ["BROKEN_KINDS", "CohortSummary", "generate_cohort"]
