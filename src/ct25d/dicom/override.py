"""A user's series choices (config `ingest.series_override`), applied before the ranking.

No rule reads every archive right; a user who has looked at a study says which series to use in a
CSV with columns `study,series`. A study is named by its pseudonymous id (as the reports show it),
its label key (CQ500 name `CQ500-CT-13` or folder `CQ500CT13 CQ500CT13`, a dicom_tree folder key)
or its StudyInstanceUID; a series by its unit or folder name as series_choice.csv shows it, its
SeriesDescription, its pseudonymous id or its SeriesInstanceUID. Raw UIDs are compared as
pseudonyms and never stored. A row that names no study or series, or more than one, stops the scan.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pandas as pd

from ct25d.dicom.headers import pseudonym
from ct25d.errors import ConfigError
from ct25d.labels import LabelError, cq500_study_name


def read_override(path: str | Path) -> pd.DataFrame:
    """The override CSV: one row per study, columns `study` and `series` (strings)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"ingest.series_override: cannot read {path} ({exc})") from exc
    if not {"study", "series"} <= set(table.columns):
        raise ConfigError(
            f"ingest.series_override: {path} needs columns study,series; found {list(table.columns)}"
        )
    return table[["study", "series"]].apply(lambda c: c.str.strip())


def _study_names(value: str, salt: str) -> set[str]:
    names = {value, pseudonym(value, salt, "st-")}
    with contextlib.suppress(LabelError):  # not a CQ500 folder name
        names.add(cq500_study_name(value))
    return names


def apply_override(series: pd.DataFrame, studies: pd.DataFrame, path: str | Path, salt: str) -> pd.DataFrame:
    """`series` with an `override` column: True for the series the file chose for its study."""
    table = read_override(path)
    series = series.assign(override=False)
    name_of = studies.set_index("study_id")["name"].fillna("") if "name" in studies else pd.Series(dtype=str)
    for row in table.itertuples():
        wanted = _study_names(row.study, salt)
        hits = [s for s in series["study_id"].unique() if s in wanted or name_of.get(s, "") in wanted]
        if len(hits) != 1:
            raise ConfigError(f"ingest.series_override: {path} row {row.Index + 2}: study {row.study!r} "
                              f"matches {len(hits)} studies of this dataset")  # fmt: skip
        names = {row.series, pseudonym(row.series, salt, "se-")}
        own = series[series["study_id"] == hits[0]]
        chosen = own[own["unit"].isin(names) | own["unit"].map(os.path.basename).isin(names)
                     | own["series_description"].isin(names) | own["series_id"].isin(names)]  # fmt: skip
        if len(chosen) != 1:
            raise ConfigError(
                f"ingest.series_override: {path} row {row.Index + 2}: series {row.series!r} "
                f"matches {len(chosen)} of the study's series {sorted(own['unit'])}"
            )
        series.loc[chosen.index, "override"] = True
    return series
