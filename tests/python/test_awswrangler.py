"""awswrangler (AWS SDK for pandas) with `wr.config.timestream_*_endpoint_url` set: it then gives
boto3 an endpoint_url (no discovery) and takes the keys, region and CA from the environment.

What it sends: `write` makes MULTI records (or scalar ones for one measure column) with
`DimensionValueType: VARCHAR`, in batches of 100, with `CommonAttributes` carrying `Version` 1,
`TimeUnit` MILLISECONDS and `MeasureName` (the first measure column); it returns the rejected
records. `query` runs the Query paginator and parses TIMESTAMPs with exactly nine fractional
digits."""

from __future__ import annotations

import awswrangler as wr
import numpy as np
import pandas as pd
import pytest

import support

ROWS = 30


@pytest.fixture
def wrangler(stack):
    wr.config.timestream_write_endpoint_url = stack.endpoint
    wr.config.timestream_query_endpoint_url = stack.endpoint
    yield wr
    wr.config.reset("timestream_write_endpoint_url")
    wr.config.reset("timestream_query_endpoint_url")


@pytest.fixture
def wr_table(wrangler, databases):
    db = databases.adopt(support.unique("wr"))
    assert wrangler.timestream.create_database(db).endswith(f":database/{db}")
    table = support.unique("wr_t")
    arn = wrangler.timestream.create_table(db, table, memory_retention_hours=6, magnetic_retention_days=30)
    assert arn.endswith(f":database/{db}/table/{table}")
    return db, table


def frame() -> pd.DataFrame:
    """ROWS rows a minute ago, whole milliseconds (awswrangler sends milliseconds), UTC."""
    start = pd.Timestamp.now(tz="UTC").floor("ms") - pd.Timedelta(minutes=1)
    return pd.DataFrame(
        {
            "time": [start - pd.Timedelta(milliseconds=1500 * i) for i in range(ROWS)],
            "temperature": [20.0 + i / 4 for i in range(ROWS)],
            "hits": np.arange(ROWS, dtype="int64") * 7,
            "ok": [i % 3 == 0 for i in range(ROWS)],
            "site": ["north" if i % 2 else "south" for i in range(ROWS)],
            "sensor": [f"s{i:02d}" for i in range(ROWS)],
        }
    )


NORMAL_DTYPES = {"temperature": "float64", "hits": "int64", "ok": bool, "site": object, "sensor": object}


def normalised(df: pd.DataFrame) -> pd.DataFrame:
    """Same dtypes whatever pandas or awswrangler inferred: UTC milliseconds, python strings."""
    out = df.reset_index(drop=True).copy()
    out["time"] = pd.to_datetime(out["time"], utc=True).dt.as_unit("ms")
    for column, dtype in NORMAL_DTYPES.items():
        if column in out:
            out[column] = out[column].astype(dtype)
    return out.sort_values("sensor").reset_index(drop=True)


def test_wr_create_database_and_table_return_arns_listed_by_wr(wrangler, wr_table):
    db, table = wr_table
    assert db in wrangler.timestream.list_databases()
    assert wrangler.timestream.list_tables(database=db) == [table]


def test_wr_list_tables_without_a_database_lists_every_database(wrangler, wr_table):
    """ListTables without DatabaseName (optional in the model) lists the tables of all databases."""
    _, table = wr_table
    assert table in wrangler.timestream.list_tables()


def test_wr_write_of_three_measures_and_two_dimensions_round_trips(wrangler, wr_table):
    db, table = wr_table
    df = frame()
    rejected = wrangler.timestream.write(
        df=df,
        database=db,
        table=table,
        time_col="time",
        measure_col=["temperature", "hits", "ok"],
        dimensions_cols=["site", "sensor"],
    )
    assert rejected == []
    got = wrangler.timestream.query(
        f"SELECT time, temperature, hits, ok, site, sensor FROM {support.qualified(db, table)}"
    )
    assert list(got.columns) == list(df.columns)
    pd.testing.assert_frame_equal(normalised(got), normalised(df))


def test_wr_booleans_written_as_python_text_are_read_back_as_timestream_text(wrangler, wr_table, query):
    """awswrangler sends BOOLEAN measures as str(bool): "True" / "False"; Timestream renders
    BOOLEAN values as `true` / `false`."""
    db, table = wr_table
    df = frame().head(4)
    assert wrangler.timestream.write(
        df=df, database=db, table=table, time_col="time", measure_col=["temperature", "hits", "ok"],
        dimensions_cols=["site", "sensor"],
    ) == []  # fmt: skip
    _, found = support.run(query, f"SELECT sensor, ok FROM {support.qualified(db, table)}")
    assert sorted(found) == sorted([s, str(ok).lower()] for s, ok in zip(df["sensor"], df["ok"]))


def test_wr_write_of_one_measure_is_a_scalar_record(wrangler, wr_table):
    db, table = wr_table
    df = frame()[["time", "temperature", "site", "sensor"]]
    rejected = wrangler.timestream.write(
        df=df, database=db, table=table, time_col="time", measure_col="temperature", dimensions_cols=["site", "sensor"]
    )
    assert rejected == []
    got = wrangler.timestream.query(
        f'SELECT time, "measure_value::double" AS temperature, site, sensor, measure_name '
        f"FROM {support.qualified(db, table)}"
    )
    assert set(got["measure_name"]) == {"temperature"}
    pd.testing.assert_frame_equal(normalised(got.drop(columns="measure_name")), normalised(df))


def test_wr_write_returns_the_rejected_records(wrangler, wr_table):
    """A record 20 minutes ahead is refused; awswrangler hands back Timestream's RejectedRecords."""
    db, table = wr_table
    df = frame().head(3).copy()
    df.loc[1, "time"] = pd.Timestamp.now(tz="UTC").floor("ms") + pd.Timedelta(minutes=20)
    rejected = wrangler.timestream.write(
        df=df,
        database=db,
        table=table,
        time_col="time",
        measure_col=["temperature", "hits", "ok"],
        dimensions_cols=["site", "sensor"],
        use_threads=False,
    )
    assert [r["RecordIndex"] for r in rejected] == [1]
    got = wrangler.timestream.query(f"SELECT sensor FROM {support.qualified(db, table)} ORDER BY sensor")
    assert list(got["sensor"]) == [df.loc[0, "sensor"], df.loc[2, "sensor"]]
