"""The upstream state_dict key tables, vendored in third_party/reference_keys."""

import csv
import pathlib

REFERENCE_DIR = pathlib.Path(__file__).resolve().parents[1] / "third_party" / "reference_keys"
COLUMNS = ["key", "shape", "dtype", "kind", "requires_grad", "numel"]


def read_table(name: str):
  """Rows (key, shape, dtype, kind, requires_grad, numel) of `name`, header checked and dropped."""
  path = REFERENCE_DIR / name
  with open(path, newline="") as f:
    rows = [tuple(row) for row in csv.reader(f, delimiter="\t")]
  assert list(rows[0]) == COLUMNS, f"{path}: unexpected header {rows[0]}"
  return rows[1:]
