"""WriteRecords: CommonAttributes, MULTI records, time units, versions and upserts, per-record
rejections, throttling, and that a write is queryable as soon as it is acknowledged.

Every check of stored data is a single Query made right after the write's 200: the server
answers WriteRecords only once the rows are applied (a deliberate guarantee; nothing here polls).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import pytest

import support
from conftest import create_table
from support import NS_PER, assert_error, multi, rejected_indexes, run, single, ts_string

MINUTE_MS = 60 * 1000
HOUR_MS = 60 * MINUTE_MS


def write_one(write, table, records, **kwargs):
    return write.write_records(DatabaseName=table.database, TableName=table.table, Records=records, **kwargs)


def count(query, table) -> int:
    _, found = run(query, f"SELECT count(*) FROM {table.sql}")
    return int(found[0][0])


# --- CommonAttributes ------------------------------------------------------------------------


def test_100_records_share_common_attributes_and_are_all_ingested(write, query, table):
    t = support.now_ms() - MINUTE_MS
    common = {
        "Dimensions": support.dims(fleet="north"),
        "MeasureName": "speed",
        "MeasureValueType": "DOUBLE",
        "Time": str(t),
        "TimeUnit": "MILLISECONDS",
        "Version": 3,
    }
    records = [{"Dimensions": support.dims(device=f"d{i}"), "MeasureValue": f"{i}.5"} for i in range(100)]
    answer = write_one(write, table, records, CommonAttributes=common)
    assert answer["RecordsIngested"] == {"Total": 100, "MemoryStore": 100, "MagneticStore": 0}

    columns, found = run(
        query, f'SELECT fleet, device, measure_name, time, "measure_value::double", version FROM {table.sql}'
    )
    types = support.scalar_types(columns)
    assert {k: types[k] for k in ("fleet", "device", "measure_name", "time", "measure_value::double")} == {
        "fleet": "VARCHAR",
        "device": "VARCHAR",
        "measure_name": "VARCHAR",
        "time": "TIMESTAMP",
        "measure_value::double": "DOUBLE",
    }
    by_device = {row[1]: row for row in found}
    assert len(found) == 100 and len(by_device) == 100
    for i in range(100):
        fleet, _, name, time, value, version = by_device[f"d{i}"]
        assert (fleet, name, time, float(value), version) == ("north", "speed", ts_string(t * 10**6), i + 0.5, "3")


def test_empty_common_attributes_object_is_accepted(write, query, table):
    """Telegraf's outputs.timestream sends `CommonAttributes: {}`."""
    record = single({"host": "h1"}, "cpu", "12.5", support.now_ms())
    assert write_one(write, table, [record], CommonAttributes={})["RecordsIngested"]["Total"] == 1
    assert count(query, table) == 1


@pytest.mark.parametrize("n", [0, 101])
def test_zero_or_101_records_is_validation(write_unvalidated, query, table, n):
    t = support.now_ms()
    records = [single({"device": f"d{i}"}, "speed", "1.0", t) for i in range(n)]
    with pytest.raises(write_unvalidated.exceptions.ValidationException) as caught:
        write_one(write_unvalidated, table, records)
    assert_error(caught, "ValidationException", 400)
    assert count(query, table) == 0


def test_dimension_in_both_common_attributes_and_a_record_is_validation(write, query, table):
    common = {"Dimensions": support.dims(fleet="north")}
    record = single({"fleet": "south", "device": "d1"}, "speed", "1.0", support.now_ms())
    with pytest.raises(write.exceptions.ValidationException) as caught:
        write_one(write, table, [record], CommonAttributes=common)
    assert_error(caught, "ValidationException", 400)
    assert count(query, table) == 0


# --- MULTI -----------------------------------------------------------------------------------

FOUR_MEASURES = [
    ("temp_c", "21.5", "DOUBLE"),
    ("hits", "42", "BIGINT"),
    ("ok", "true", "BOOLEAN"),
    ("label", "north gate", "VARCHAR"),
]


def test_multi_record_with_four_types_is_one_row_of_typed_columns(write, query, table):
    t = support.now_ms()
    write_one(write, table, [multi({"truck": "t1"}, "metrics", FOUR_MEASURES, t)])
    columns, found = run(query, f"SELECT * FROM {table.sql}")
    assert len(found) == 1
    row = support.records_by(columns, found)[0]
    types = support.scalar_types(columns)
    assert (row["truck"], row["measure_name"], row["time"]) == ("t1", "metrics", ts_string(t * 10**6))
    assert types["truck"] == "VARCHAR" and types["time"] == "TIMESTAMP"
    for name, value, kind in FOUR_MEASURES:
        assert types[name] == kind, (name, columns)
    assert float(row["temp_c"]) == 21.5
    assert (row["hits"], row["ok"], row["label"]) == ("42", "true", "north gate")


def bad_record(t, fields):
    return {"Dimensions": support.dims(device="bad"), "Time": str(t), "TimeUnit": "MILLISECONDS", **fields}


@pytest.mark.parametrize(
    "bad",
    [
        {"MeasureValueType": "MULTI", "MeasureName": "metrics"},  # MULTI without MeasureValues
        {"MeasureValueType": "DOUBLE", "MeasureName": "speed", "MeasureValue": "1.0", "Version": 0},
        {"MeasureValueType": "DOUBLE", "MeasureName": "speed", "MeasureValue": "fast"},
    ],
    ids=["multi-without-measure-values", "version-0", "double-that-is-not-a-number"],
)
def test_a_record_outside_the_api_shapes_refuses_the_call_naming_it(write, query, table, bad):
    """Timestream: "Version must be 1 or greater, or you will receive a ValidationException". A
    record that does not follow the API's shapes refuses the whole call, which names it."""
    t = support.now_ms()
    good = single({"device": "good"}, "speed", "1.0", t)
    with pytest.raises(write.exceptions.ValidationException) as caught:
        write_one(write, table, [good, bad_record(t, bad)])
    assert "record 1" in caught.value.response["Error"]["Message"]
    assert count(query, table) == 0


def test_a_record_past_a_quota_is_rejected_by_index_and_the_others_are_stored(write, query, table):
    """A well-formed record that breaks a quota (here a MULTI record of no measures) is rejected
    alone, by its index, and the others are stored."""
    t = support.now_ms()
    good = single({"device": "good"}, "speed", "1.0", t)
    empty = bad_record(t, {"MeasureValueType": "MULTI", "MeasureName": "metrics", "MeasureValues": []})
    with pytest.raises(write.exceptions.RejectedRecordsException) as caught:
        write_one(write, table, [good, empty])
    assert rejected_indexes(caught) == [1]
    _, found = run(query, f"SELECT device FROM {table.sql}")
    assert found == [["good"]]


def test_a_measure_keeps_the_type_of_its_first_write(write, query, table):
    """Types are fixed by the first write, as in Timestream: a conflict is a rejected record."""
    t = support.now_ms()
    write_one(write, table, [single({"device": "a"}, "speed", "1.5", t)])
    with pytest.raises(write.exceptions.RejectedRecordsException) as caught:
        write_one(write, table, [single({"device": "b"}, "speed", "2", t, kind="BIGINT")])
    assert rejected_indexes(caught) == [0]
    assert count(query, table) == 1


# --- Time ------------------------------------------------------------------------------------


def test_the_four_time_units_store_the_same_instant(write, query, table):
    instant_ns = (support.now_ms() - MINUTE_MS) // 1000 * 10**9  # a whole second: SECONDS can say it
    records = [
        single({"unit": unit}, "speed", "1.0", 0, Time=str(instant_ns // per), TimeUnit=unit)
        for unit, per in NS_PER.items()
    ]
    write_one(write, table, records)
    _, found = run(query, f"SELECT unit, time FROM {table.sql}")
    assert sorted(found) == sorted([unit, ts_string(instant_ns)] for unit in NS_PER)


def test_nanoseconds_are_kept_and_rendered_with_nine_digits(write, query, table):
    instant_ns = (support.now_ms() - MINUTE_MS) * 10**6 + 123_457  # sub-millisecond digits
    write_one(write, table, [single({"d": "x"}, "speed", "1.0", 0, Time=str(instant_ns), TimeUnit="NANOSECONDS")])
    _, found = run(query, f"SELECT time FROM {table.sql}")
    assert found == [[ts_string(instant_ns)]]
    assert support.TIMESTAMP_RE.match(found[0][0])


def test_future_and_too_old_records_are_rejected_by_index_and_the_rest_stored(write, query, table):
    """Timestream refuses a record more than 15 minutes ahead, and one older than the table's
    memory retention (6 h) when magnetic store writes are off."""
    now = support.now_ms()
    times = {i: now - i * 1000 for i in range(10)}
    times[3] = now + 20 * MINUTE_MS
    times[7] = now - 7 * HOUR_MS
    records = [single({"i": str(i)}, "speed", str(float(i)), times[i]) for i in range(10)]
    with pytest.raises(write.exceptions.RejectedRecordsException) as caught:
        write_one(write, table, records)
    assert rejected_indexes(caught) == [3, 7]
    _, found = run(query, f'SELECT i, "measure_value::double" FROM {table.sql}')
    assert sorted((int(i), float(v)) for i, v in found) == [(i, float(i)) for i in range(10) if i not in (3, 7)]


# --- Versions and upserts --------------------------------------------------------------------


def test_upsert_needs_a_higher_version_and_reports_the_existing_one(write, query, table):
    t = support.now_ms() - MINUTE_MS
    key = {"sensor": "s1"}
    latest = f"SELECT \"measure_value::double\", version FROM {table.sql} WHERE sensor = 's1'"

    write_one(write, table, [single(key, "temperature", "1.0", t, Version=1)])
    value, version = run(query, latest)[1][0]
    assert (float(value), version) == (1.0, "1")

    other = single({"sensor": "s2"}, "temperature", "9.0", t)
    with pytest.raises(write.exceptions.RejectedRecordsException) as caught:
        write_one(write, table, [other, single(key, "temperature", "2.0", t)])
    response = assert_error(caught, "RejectedRecordsException", 419)
    assert [(r["RecordIndex"], r.get("ExistingVersion")) for r in response["RejectedRecords"]] == [(1, 1)]
    value, version = run(query, latest)[1][0]
    assert (float(value), version) == (1.0, "1")

    write_one(write, table, [single(key, "temperature", "2.0", t, Version=2)])
    value, version = run(query, latest)[1][0]
    assert (float(value), version) == (2.0, "2")

    write_one(write, table, [single(key, "temperature", "2.0", t, Version=3)])
    found = run(query, latest)[1]
    assert len(found) == 1, "each key is shown once"
    assert (float(found[0][0]), found[0][1]) == (2.0, "3")


# --- Visibility, throttling, volume ----------------------------------------------------------


def test_a_write_is_queryable_right_after_its_200(write, query, table):
    t = support.now_ms()
    write_one(write, table, [single({"device": "now"}, "speed", "7.25", t)])
    _, found = run(query, f'SELECT device, time, "measure_value::double" FROM {table.sql}')  # once, no poll
    assert [(d, tm, float(v)) for d, tm, v in found] == [("now", ts_string(t * 10**6), 7.25)]


def test_writes_throttled_while_ingest_is_paused_are_retried_by_boto3_until_they_succeed(stack, rest, query, table):
    """Real backpressure: with every ingest worker paused (SIGSTOP), a write reaches Kafka but is
    not applied within the stack's write timeout, and is answered 429 ThrottlingException (retrying
    is safe). boto3's legacy retry mode retries Throttling 4 times; once the workers go on, a retry
    succeeds and the record is stored once."""
    client = support.client(stack, "timestream-write", retries={"mode": "legacy", "max_attempts": 4})
    attempts = []

    def on_response(response_dict, parsed_response, **_):
        code = (parsed_response or {}).get("Error", {}).get("Code")
        attempts.append((response_dict["status_code"], code) if response_dict else None)

    client.meta.events.register("response-received.timestream-write.WriteRecords", on_response)
    before = rest.metric("lodestone_timestream_throttled_total")
    pool = concurrent.futures.ThreadPoolExecutor(1)
    for pid in stack.ingest_pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        pending = pool.submit(write_one, client, table, [single({"device": "d1"}, "speed", "3.5", support.now_ms())])
        deadline = time.monotonic() + 60
        while rest.metric("lodestone_timestream_throttled_total") == before:
            assert time.monotonic() < deadline, "no write was throttled while the workers were paused"
            time.sleep(0.1)  # a poll with a deadline, not a synchronisation
    finally:
        for pid in stack.ingest_pids:
            os.kill(pid, signal.SIGCONT)
    answer = pending.result(timeout=120)
    pool.shutdown()
    throttled = answer["ResponseMetadata"]["RetryAttempts"]
    assert throttled >= 1
    assert attempts == [(429, "ThrottlingException")] * throttled + [(200, None)]
    assert answer["RecordsIngested"]["Total"] == 1
    assert rest.metric("lodestone_timestream_throttled_total") == before + throttled
    assert count(query, table) == 1


def test_10000_multi_records_in_batches_of_100_come_back_once_each_through_pages(write, query, table):
    base = support.now_ms() - 5 * MINUTE_MS
    records = [
        multi(
            {"device": f"dev{i % 100:02d}"},
            "reading",
            [("seq", str(i), "BIGINT"), ("level", str(i / 4), "DOUBLE"), ("even", str(i % 2 == 0).lower(), "BOOLEAN")],
            base - i // 100,
        )
        for i in range(10_000)
    ]
    assert support.write_all(write, table.database, table.table, records) == 10_000

    answer = support.pages(query, f"SELECT device, seq, level, even FROM {table.sql}", page_size=1000)
    assert all(len(p["Rows"]) <= 1000 for p in answer)
    found = support.rows(answer)
    seqs = sorted(int(r[1]) for r in found)
    assert seqs == list(range(10_000)), "every record exactly once"
    for device, seq, level, even in found:
        i = int(seq)
        assert (device, float(level), even) == (f"dev{i % 100:02d}", i / 4, str(i % 2 == 0).lower())
