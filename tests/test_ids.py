"""index/ids.parquet: fixed-size row groups, so a lookup reads only the row groups that hold its ids."""

from __future__ import annotations

import pyarrow as pa
import pytest

from clipcrawl.tasks.index.ids import IDS_ROW_GROUP, IdTable, write_ids


def rows(start: int, stop: int, shard: str = "00000") -> pa.Table:
    n = stop - start
    return pa.table(
        {
            "key": [f"k{i}" for i in range(start, stop)],
            "shard": [shard] * n,
            "row": list(range(n)),
            "url": [f"https://x.test/{i}.jpg" for i in range(start, stop)],
            "caption": ["t"] * n,
            "similarity": [0.5] * n,
            "duplicate_group": list(range(start, stop)),
        }
    )


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("ids") / "ids.parquet")
    # uneven input tables: the writer regroups them into fixed row groups
    n = write_ids(
        uri, [rows(0, 10), rows(10, IDS_ROW_GROUP + 5, "00001"), rows(IDS_ROW_GROUP + 5, 2 * IDS_ROW_GROUP + 7)]
    )
    assert n == 2 * IDS_ROW_GROUP + 7
    return IdTable(uri)


def test_row_groups_have_the_fixed_size(table):
    sizes = [table._file.metadata.row_group(g).num_rows for g in range(table._file.num_row_groups)]
    assert sizes == [IDS_ROW_GROUP, IDS_ROW_GROUP, 7]


def test_lookup_returns_rows_by_id_in_the_order_asked(table):
    last = table.count - 1
    found = table.lookup([last, 0, IDS_ROW_GROUP])
    assert [r["id"] for r in found] == [last, 0, IDS_ROW_GROUP]
    assert [r["key"] for r in found] == [f"k{last}", "k0", f"k{IDS_ROW_GROUP}"]
    assert found[2]["shard"] == "00001" and found[2]["row"] == IDS_ROW_GROUP - 10
    with pytest.raises(IndexError, match="out of range"):
        table.lookup([table.count])


def test_column_range_crosses_row_groups(table):
    keys = table.column_range("key", IDS_ROW_GROUP - 2, IDS_ROW_GROUP + 3)
    assert keys.tolist() == [f"k{i}" for i in range(IDS_ROW_GROUP - 2, IDS_ROW_GROUP + 3)]
    assert len(table.column_range("row", 5, 5)) == 0
    assert table.column("duplicate_group").tolist() == list(range(table.count))
    with pytest.raises(IndexError):
        table.column_range("row", 0, table.count + 1)
