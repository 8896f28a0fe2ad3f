"""Reading the on-disk formats: ViLT/METER ``.arrow`` tables (Arrow IPC files) and GLUE TSVs.

Every problem with a user's data folder becomes one :class:`UserError` line that names the file and
what was expected there.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from das_tune.errors import UserError


def data_folder(data_dir: str | Path | None, dataset: str, expected: Sequence[str]) -> Path:
    """The folder ``data_dir``, which must exist and hold the ``expected`` files."""
    wanted = ", ".join(expected)
    if data_dir is None:
        raise UserError(f"{dataset} needs a data folder holding {wanted} (or tiny=True for synthetic data)")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise UserError(f"{dataset} data folder {folder} does not exist; expected a folder holding {wanted}")
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{dataset} data folder {folder} lacks {', '.join(missing)}; expected {wanted}")
    return folder


def read_arrow(path: Path, columns: Sequence[str]) -> pa.Table:
    """The ``columns`` of the Arrow IPC file at ``path`` (as ViLT's ``write_*.py`` tools write them)."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"{path} is not a readable Arrow IPC file ({err})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise UserError(
            f"{path} lacks the column(s) {', '.join(missing)}; expected {', '.join(columns)} "
            f"(it has {', '.join(table.column_names)})"
        )
    # pandas metadata differs between files; without it, tables of one dataset concatenate.
    return table.select(list(columns)).replace_schema_metadata(None)


def read_arrows(folder: Path, names: Sequence[str], columns: Sequence[str]) -> pa.Table:
    """The files ``folder/NAME.arrow`` for each of ``names``, one after the other."""
    tables = [read_arrow(folder / f"{name}.arrow", columns) for name in names]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowInvalid as err:
        files = ", ".join(f"{n}.arrow" for n in names)
        raise UserError(f"{files} in {folder} have incompatible column types ({err})") from None


def read_tsv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a GLUE TSV file (header line first, no quoting) as dicts."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(
                f"{path} lacks the column(s) {', '.join(missing)} in its header line; "
                f"expected a tab-separated header with {', '.join(columns)}"
            )
        return list(reader)


def entry_keys(table: pa.Table, column: str) -> np.ndarray:
    """(row, index) for every entry of the list column ``column``, row by row."""
    counts = pc.list_value_length(table[column]).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(counts)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.stack([rows, np.arange(len(rows)) - starts], axis=1)


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


class LazySequence(Sequence):
    """Examples built on access from a list of keys (images are decoded only when read).

    Slicing gives another lazy sequence, so limiting a split costs nothing.
    """

    def __init__(self, keys: Sequence[Any], make: Callable[[Any], Any]) -> None:
        self._keys = keys
        self._make = make

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return LazySequence(self._keys[index], self._make)
        return self._make(self._keys[index])
