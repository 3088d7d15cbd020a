"""Writes tests/fixtures/prefs.parquet: a tiny preference set in TRL's standard layout,
as Hugging Face datasets publish them (pyarrow, snappy), with one row missing
"rejected" to check row-numbered errors.

    python scripts/make_parquet_fixture.py tests/fixtures/prefs.parquet
"""
import sys

import pyarrow as pa
import pyarrow.parquet as pq

rows = {
    "prompt": ["Q1:", "Q2:", "Q3:", "Q4:"],
    "chosen": ["good", "fine", "great", "nice"],
    "rejected": ["bad", "poor", None, "meh"],
}
pq.write_table(pa.table(rows), sys.argv[1], compression="snappy")
