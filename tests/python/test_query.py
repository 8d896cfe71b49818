"""Query: Timestream's value encoding (scalars, NULL, arrays, timeseries, rows), paging, query
status, cancellation, PrepareQuery, account settings, and the calls of Grafana's Timestream
plugin."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest

import support
from conftest import Table, create_table
from support import TIMESTAMP_RE, assert_error, multi, run, single, ts_string

MINUTE_MS = 60_000

# (sensor, offset from BASE in ms, temperature): single-measure DOUBLE records.
READINGS = [
    ("s1", -5 * MINUTE_MS, 100.0),  # before the window of the Grafana query
    ("s1", 0, 1.0),
    ("s1", 30_000, 3.0),
    ("s1", 60_000, 5.0),
    ("s1", 180_000, 2.0),
    ("s1", 200_000, 4.0),
    ("s2", 10_000, 10.0),
    ("s2", 70_000, 20.0),
]
BIG_ROWS = 2_500


@dataclass(frozen=True)
class Data:
    base_ms: int  # a whole minute, 30 minutes ago
    readings: Table  # READINGS, measure `temperature`
    typed: Table  # two MULTI records of DOUBLE, BIGINT, BOOLEAN, VARCHAR (one without `label`)
    big: Table  # BIG_ROWS records, measure `seq` BIGINT 0..BIG_ROWS-1

    def points(self, sensor: str) -> list[tuple[str, float]]:
        """(time text, value) of `sensor`'s readings in time order."""
        return sorted(
            (ts_string((self.base_ms + offset) * 10**6), value) for s, offset, value in READINGS if s == sensor
        )


@pytest.fixture(scope="module")
def data(write, module_databases) -> Data:
    db = module_databases()
    base = (support.now_ms() - 30 * MINUTE_MS) // MINUTE_MS * MINUTE_MS

    readings = create_table(write, db)
    records = [single({"sensor": s}, "temperature", str(v), base + offset) for s, offset, v in READINGS]
    assert support.write_all(write, db, readings.table, records) == len(READINGS)

    typed = create_table(write, db)
    records = [
        multi(
            {"truck": "t1"},
            "metrics",
            [
                ("temp_c", "21.5", "DOUBLE"),
                ("hits", "42", "BIGINT"),
                ("ok", "true", "BOOLEAN"),
                ("label", "north", "VARCHAR"),
            ],
            base,
        ),
        multi(
            {"truck": "t2"},
            "metrics",
            [("temp_c", "-3.25", "DOUBLE"), ("hits", "0", "BIGINT"), ("ok", "false", "BOOLEAN")],
            base,
        ),
    ]
    assert support.write_all(write, db, typed.table, records) == 2

    big = create_table(write, db)
    records = [single({"device": f"d{i % 50}"}, "seq", str(i), base - i // 50, kind="BIGINT") for i in range(BIG_ROWS)]
    assert support.write_all(write, db, big.table, records) == BIG_ROWS
    return Data(base, readings, typed, big)


def big_sql(data: Data) -> str:
    return f'SELECT "measure_value::bigint" AS seq FROM {data.big.sql}'


# --- Encoding of values ----------------------------------------------------------------------


def test_select_1_is_scalar_1(query):
    """Grafana's health check."""
    answer = query.query(QueryString="SELECT 1")
    assert answer["Rows"][0]["Data"][0]["ScalarValue"] == "1"
    assert re.fullmatch(r"[a-zA-Z0-9]{1,64}", answer["QueryId"]), answer["QueryId"]  # the model's QueryId
    assert "NextToken" not in answer


@pytest.mark.parametrize(
    ("sql", "scalar_type", "datum"),
    [
        ("SELECT CAST(7 AS BIGINT)", "BIGINT", {"ScalarValue": "7"}),
        ("SELECT CAST(2.5 AS DOUBLE)", "DOUBLE", {"ScalarValue": "2.5"}),
        ("SELECT true", "BOOLEAN", {"ScalarValue": "true"}),
        ("SELECT false", "BOOLEAN", {"ScalarValue": "false"}),
        ("SELECT 'lodestone'", "VARCHAR", {"ScalarValue": "lodestone"}),
        ("SELECT CAST(NULL AS VARCHAR)", "VARCHAR", {"NullValue": True}),
    ],
    ids=["bigint", "double", "true", "false", "varchar", "null"],
)
def test_literals_are_strings_with_their_scalar_type(query, sql, scalar_type, datum):
    answer = query.query(QueryString=sql)
    assert answer["ColumnInfo"][0]["Type"] == {"ScalarType": scalar_type}
    assert answer["Rows"] == [{"Data": [datum]}]


def test_table_columns_have_scalar_types_timestamps_and_nulls(query, data):
    answer = support.pages(query, f"SELECT truck, time, temp_c, hits, ok, label FROM {data.typed.sql} ORDER BY truck")
    columns = answer[0]["ColumnInfo"]
    assert support.scalar_types(columns) == {
        "truck": "VARCHAR",
        "time": "TIMESTAMP",
        "temp_c": "DOUBLE",
        "hits": "BIGINT",
        "ok": "BOOLEAN",
        "label": "VARCHAR",
    }
    t1, t2 = [row["Data"] for page in answer for row in page["Rows"]]
    for row in (t1, t2):
        assert TIMESTAMP_RE.match(row[1]["ScalarValue"]), row[1]
        assert row[1]["ScalarValue"] == ts_string(data.base_ms * 10**6)
    assert [t1[0], t1[3], t1[4], t1[5]] == [{"ScalarValue": v} for v in ("t1", "42", "true", "north")]
    assert [t2[0], t2[3], t2[4]] == [{"ScalarValue": v} for v in ("t2", "0", "false")]
    assert (float(t1[2]["ScalarValue"]), float(t2[2]["ScalarValue"])) == (21.5, -3.25)
    assert t2[5] == {"NullValue": True}


def test_create_time_series_is_a_timeseries_column(query, data):
    sql = (
        f"SELECT sensor, create_time_series(time, measure_value::double) AS series "
        f"FROM {data.readings.sql} GROUP BY sensor ORDER BY sensor"
    )
    answer = query.query(QueryString=sql)
    series_type = answer["ColumnInfo"][1]["Type"]
    assert answer["ColumnInfo"][1]["Name"] == "series"
    assert series_type["TimeSeriesMeasureValueColumnInfo"]["Type"] == {"ScalarType": "DOUBLE"}
    assert [r["Data"][0]["ScalarValue"] for r in answer["Rows"]] == ["s1", "s2"]
    for row, sensor in zip(answer["Rows"], ["s1", "s2"]):
        series = row["Data"][1]["TimeSeriesValue"]
        assert all(set(p) == {"Time", "Value"} and set(p["Value"]) == {"ScalarValue"} for p in series), series
        assert [(p["Time"], float(p["Value"]["ScalarValue"])) for p in series] == data.points(sensor)


@pytest.mark.parametrize("expression", ["ARRAY[1, 2, 3]", "make_array(1, 2, 3)"])
def test_arrays_are_array_column_info_and_array_value(query, expression):
    answer = query.query(QueryString=f"SELECT {expression} AS a")
    column = answer["ColumnInfo"][0]
    assert column["Name"] == "a"
    assert column["Type"]["ArrayColumnInfo"]["Type"]["ScalarType"] in ("INTEGER", "BIGINT")
    assert answer["Rows"][0]["Data"][0] == {"ArrayValue": [{"ScalarValue": v} for v in ("1", "2", "3")]}


def test_cross_join_unnest_of_a_timeseries_gives_one_row_per_point(query, data):
    sql = (
        f"WITH s AS (SELECT sensor, create_time_series(time, measure_value::double) AS series "
        f"FROM {data.readings.sql} GROUP BY sensor) "
        f"SELECT s.sensor, u.time, u.value FROM s CROSS JOIN UNNEST(s.series) AS u(time, value)"
    )
    columns, found = run(query, sql)
    assert support.column_names(columns) == ["sensor", "time", "value"]
    assert support.scalar_types(columns) == {"sensor": "VARCHAR", "time": "TIMESTAMP", "value": "DOUBLE"}
    got = sorted((sensor, time, float(value)) for sensor, time, value in found)
    assert got == sorted((s, t, v) for s in ("s1", "s2") for t, v in data.points(s))


# --- Grafana's Timestream plugin -------------------------------------------------------------


def test_grafana_show_databases_and_tables(query, data):
    columns, found = run(query, "SHOW DATABASES")
    assert support.column_names(columns) == ["Database"]
    assert [data.readings.database] in found
    columns, found = run(query, f'SHOW TABLES FROM "{data.readings.database}"')
    assert support.column_names(columns) == ["Table"]
    assert sorted(found) == sorted([[t.table] for t in (data.readings, data.typed, data.big)])


def test_grafana_show_measures_lists_dimensions_as_rows(query, data):
    answer = query.query(QueryString=f"SHOW MEASURES FROM {data.readings.sql}")
    columns = answer["ColumnInfo"]
    assert support.column_names(columns) == ["measure_name", "data_type", "dimensions"]
    row_type = columns[2]["Type"]["ArrayColumnInfo"]["Type"]["RowColumnInfo"]
    assert [c["Name"] for c in row_type] == ["dimension_name", "data_type"]
    (row,) = answer["Rows"]
    name, kind, dimensions = row["Data"]
    assert (name, kind) == ({"ScalarValue": "temperature"}, {"ScalarValue": "double"})
    # What the plugin reads: Data[2].ArrayValue[i].RowValue.Data[0].ScalarValue
    assert [d["RowValue"]["Data"][0]["ScalarValue"] for d in dimensions["ArrayValue"]] == ["sensor"]
    assert support.datum(dimensions) == [("sensor", "varchar")]


def test_grafana_time_filter_and_bin_query(query, data):
    start, end = data.base_ms, data.base_ms + 10 * MINUTE_MS
    sql = (
        f"SELECT bin(time, 60000ms) AS t, avg(measure_value::double) FROM {data.readings.sql} "
        f"WHERE time BETWEEN from_milliseconds({start}) AND from_milliseconds({end}) GROUP BY 1 ORDER BY 1"
    )
    columns, found = run(query, sql)
    assert [c["Type"].get("ScalarType") for c in columns] == ["TIMESTAMP", "DOUBLE"]
    expected = [(0, (1.0 + 3.0 + 10.0) / 3), (MINUTE_MS, (5.0 + 20.0) / 2), (3 * MINUTE_MS, (2.0 + 4.0) / 2)]
    assert [t for t, _ in found] == [ts_string((data.base_ms + offset) * 10**6) for offset, _ in expected]
    for (_, value), (_, average) in zip(found, expected):
        assert math.isclose(float(value), average, rel_tol=1e-12)


# --- Paging ----------------------------------------------------------------------------------


def test_2500_rows_come_back_whole_in_pages_of_at_most_1000(query, data):
    answer = support.pages(query, big_sql(data), page_size=1000)
    assert all(len(p["Rows"]) <= 1000 for p in answer)
    assert all(support.column_names(p["ColumnInfo"]) == ["seq"] for p in answer), "ColumnInfo on every page"
    tokens = [p["NextToken"] for p in answer[:-1]]
    assert len(tokens) == len(set(tokens)) >= 2
    assert all(1 <= len(t) <= 2048 for t in tokens), "the model's PaginationToken"
    assert len({p["QueryId"] for p in answer}) == 1, "one QueryId for all pages"
    assert "NextToken" not in answer[-1]
    assert sorted(int(r[0]) for r in support.rows(answer)) == list(range(BIG_ROWS))


@pytest.mark.parametrize("max_rows", [0, 1001])
def test_max_rows_outside_1_to_1000_is_validation(query_unvalidated, data, max_rows):
    with pytest.raises(query_unvalidated.exceptions.ValidationException) as caught:
        query_unvalidated.query(QueryString=big_sql(data), MaxRows=max_rows)
    assert_error(caught, "ValidationException", 400)


def test_a_next_token_with_another_query_string_is_validation(query, data):
    first = query.query(QueryString=big_sql(data), MaxRows=100)
    assert first.get("NextToken")
    with pytest.raises(query.exceptions.ValidationException) as caught:
        query.query(QueryString=big_sql(data) + " WHERE 1 = 1", NextToken=first["NextToken"], MaxRows=100)
    assert_error(caught, "ValidationException", 400)


def test_last_page_reports_100_percent_and_the_bytes_scanned_of_rest(query, rest, data):
    sql = big_sql(data)
    rest_before = rest.query(sql)["bytes_scanned"]
    answer = support.pages(query, sql, page_size=1000)
    rest_after = rest.query(sql)["bytes_scanned"]
    status = answer[-1]["QueryStatus"]
    assert status["ProgressPercentage"] == 100
    assert status["CumulativeBytesScanned"] > 0
    # Both REST runs bracket the Timestream one, in case rows moved from memory to Parquet meanwhile.
    assert status["CumulativeBytesScanned"] in (rest_before, rest_after), (status, rest_before, rest_after)


def test_cancel_query_stops_its_pages_and_can_be_repeated(query, data):
    sql = big_sql(data)
    first = query.query(QueryString=sql, MaxRows=10)
    assert first["QueryId"] and first.get("NextToken")
    message = query.cancel_query(QueryId=first["QueryId"]).get("CancellationMessage")
    assert isinstance(message, str) and message
    with pytest.raises(query.exceptions.ConflictException) as caught:
        query.query(QueryString=sql, NextToken=first["NextToken"], MaxRows=10)
    assert_error(caught, "ConflictException", 409)
    again = query.cancel_query(QueryId=first["QueryId"]).get("CancellationMessage")
    assert isinstance(again, str) and again


# --- Errors, PrepareQuery, account settings --------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    ["SELEC 1", 'SELECT * FROM "no_such_db"."no_such_table"', "CREATE TABLE x (a INT)"],
    ids=["does-not-parse", "unknown-table", "not-a-query"],
)
def test_sql_that_cannot_run_is_validation(query, sql):
    with pytest.raises(query.exceptions.ValidationException) as caught:
        query.query(QueryString=sql)
    assert_error(caught, "ValidationException", 400)


def test_prepare_query_validate_only_returns_the_columns(query, data):
    sql = f'SELECT sensor, time, "measure_value::double" AS temperature FROM {data.readings.sql}'
    answer = query.prepare_query(QueryString=sql, ValidateOnly=True)
    assert answer["QueryString"] == sql
    assert [(c["Name"], c["Type"].get("ScalarType")) for c in answer["Columns"]] == [
        ("sensor", "VARCHAR"),
        ("time", "TIMESTAMP"),
        ("temperature", "DOUBLE"),
    ]


def test_prepare_query_of_bad_sql_is_validation(query):
    with pytest.raises(query.exceptions.ValidationException) as caught:
        query.prepare_query(QueryString="SELEC 1", ValidateOnly=True)
    assert_error(caught, "ValidationException", 400)


def test_describe_account_settings_answers(query):
    answer = query.describe_account_settings()
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert answer.get("QueryPricingModel") in ("BYTES_SCANNED", "COMPUTE_UNITS"), answer
