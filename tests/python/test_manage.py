"""Databases, tables and tags through the Timestream write API, cross-checked with the REST API
(one catalog)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

import support
from conftest import create_table
from support import assert_error

DEFAULT_RETENTION = {"MemoryStoreRetentionPeriodInHours": 6, "MagneticStoreRetentionPeriodInDays": 73000}


def arn_re(stack, resource: str) -> re.Pattern:
    return re.compile(rf"^arn:aws:timestream:{re.escape(stack.region)}:\d{{12}}:{re.escape(resource)}$")


def assert_recent(moment: dt.datetime):
    now = dt.datetime.now(dt.timezone.utc)
    assert abs((now - moment).total_seconds()) < 300, (moment, now)


def sorted_tags(tags: list[dict]) -> list[dict]:
    return sorted(tags, key=lambda t: t["Key"])


def all_pages(call, key: str, **kwargs) -> list[dict]:
    """Every page of a List* call, checking each page against MaxResults and tokens unique."""
    answers, token, seen_tokens = [], None, set()
    while True:
        answer = call(**kwargs, **({"NextToken": token} if token else {}))
        assert len(answer[key]) <= kwargs.get("MaxResults", 20), answer
        answers.append(answer)
        token = answer.get("NextToken")
        if not token:
            return answers
        assert token not in seen_tokens, f"NextToken repeated: {token}"
        seen_tokens.add(token)


# --- Databases -------------------------------------------------------------------------------


def test_create_database_returns_arn_table_count_and_times(stack, write, databases):
    name = support.unique("created")
    answer = write.create_database(DatabaseName=name)["Database"]
    databases.adopt(name)
    assert answer["DatabaseName"] == name
    assert arn_re(stack, f"database/{name}").match(answer["Arn"]), answer["Arn"]
    assert answer["TableCount"] == 0
    assert_recent(answer["CreationTime"])
    assert answer["LastUpdatedTime"] >= answer["CreationTime"]
    described = write.describe_database(DatabaseName=name)["Database"]
    assert {k: described[k] for k in ("Arn", "DatabaseName", "TableCount")} == {
        k: answer[k] for k in ("Arn", "DatabaseName", "TableCount")
    }


def test_table_count_follows_create_and_delete_table(write, db):
    tables = [create_table(write, db) for _ in range(2)]
    assert write.describe_database(DatabaseName=db)["Database"]["TableCount"] == 2
    write.delete_table(DatabaseName=db, TableName=tables[0].table)
    assert write.describe_database(DatabaseName=db)["Database"]["TableCount"] == 1


def test_list_databases_pages_with_max_results_and_next_token(write, databases):
    mine = {databases() for _ in range(3)}
    answers = all_pages(write.list_databases, "Databases", MaxResults=2)
    names = [d["DatabaseName"] for a in answers for d in a["Databases"]]
    assert len(names) == len(set(names)), "a database listed twice"
    assert mine <= set(names)
    assert len(answers) >= 2


def test_list_max_results_over_20_is_validation(write_unvalidated):
    with pytest.raises(write_unvalidated.exceptions.ValidationException) as caught:
        write_unvalidated.list_databases(MaxResults=21)
    assert_error(caught, "ValidationException", 400)


def test_update_database_kms_key_is_echoed(write, db):
    key = "arn:aws:kms:us-east-1:123456789012:key/0b6b3a8e-lodestone"
    assert write.update_database(DatabaseName=db, KmsKeyId=key)["Database"]["KmsKeyId"] == key
    assert write.describe_database(DatabaseName=db)["Database"]["KmsKeyId"] == key


def test_deleting_a_database_with_tables_is_validation(write, table):
    with pytest.raises(write.exceptions.ValidationException) as caught:
        write.delete_database(DatabaseName=table.database)
    assert_error(caught, "ValidationException", 400)
    assert write.describe_database(DatabaseName=table.database)["Database"]["TableCount"] == 1


def test_deleted_database_is_not_found(write, databases):
    name = databases()
    write.delete_database(DatabaseName=name)
    with pytest.raises(write.exceptions.ResourceNotFoundException) as caught:
        write.describe_database(DatabaseName=name)
    assert_error(caught, "ResourceNotFoundException", 404)


# --- Tables ----------------------------------------------------------------------------------


def test_create_table_defaults_are_timestreams(stack, write, db):
    name = support.unique("defaults")
    answer = write.create_table(DatabaseName=db, TableName=name)["Table"]
    for table in (answer, write.describe_table(DatabaseName=db, TableName=name)["Table"]):
        assert (table["DatabaseName"], table["TableName"]) == (db, name)
        assert arn_re(stack, f"database/{db}/table/{name}").match(table["Arn"]), table["Arn"]
        assert table["TableStatus"] == "ACTIVE"
        assert table["RetentionProperties"] == DEFAULT_RETENTION
        assert table["MagneticStoreWriteProperties"]["EnableMagneticStoreWrites"] is False
        assert_recent(table["CreationTime"])


def test_create_table_in_a_missing_database_is_not_found(write):
    with pytest.raises(write.exceptions.ResourceNotFoundException) as caught:
        write.create_table(DatabaseName=support.unique("missing"), TableName=support.unique("t"))
    assert_error(caught, "ResourceNotFoundException", 404)


def test_duplicate_table_is_conflict(write, table):
    with pytest.raises(write.exceptions.ConflictException) as caught:
        write.create_table(DatabaseName=table.database, TableName=table.table)
    assert_error(caught, "ConflictException", 409)


def test_describe_missing_table_is_not_found(write, db):
    with pytest.raises(write.exceptions.ResourceNotFoundException) as caught:
        write.describe_table(DatabaseName=db, TableName="no_such_table")
    assert_error(caught, "ResourceNotFoundException", 404)


def test_list_tables_pages_25_as_20_then_5(write, db):
    made = {create_table(write, db).table for _ in range(25)}
    answers = all_pages(write.list_tables, "Tables", DatabaseName=db, MaxResults=20)
    assert [len(a["Tables"]) for a in answers] == [20, 5]
    assert "NextToken" in answers[0] and "NextToken" not in answers[1]
    assert sorted(t["TableName"] for a in answers for t in a["Tables"]) == sorted(made)


@pytest.mark.parametrize(
    "retention",
    [
        {"MemoryStoreRetentionPeriodInHours": 0, "MagneticStoreRetentionPeriodInDays": 1},
        {"MemoryStoreRetentionPeriodInHours": 8767, "MagneticStoreRetentionPeriodInDays": 1},
        {"MemoryStoreRetentionPeriodInHours": 1, "MagneticStoreRetentionPeriodInDays": 0},
        {"MemoryStoreRetentionPeriodInHours": 1, "MagneticStoreRetentionPeriodInDays": 73001},
    ],
    ids=["memory-0h", "memory-8767h", "magnetic-0d", "magnetic-73001d"],
)
def test_retention_out_of_range_is_validation(write, write_unvalidated, db, retention):
    with pytest.raises(write_unvalidated.exceptions.ValidationException) as caught:
        write_unvalidated.create_table(DatabaseName=db, TableName="t", RetentionProperties=retention)
    assert_error(caught, "ValidationException", 400)
    assert write.list_tables(DatabaseName=db)["Tables"] == []


BAD_NAMES = {
    "space": "has space",
    "slash": "a/b",
    "quote": 'a"b',
    "non-ascii": "caf\u00e9",
    "empty": "",
    "257-bytes": "a" * 257,
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_database_name_outside_timestreams_alphabet_or_over_256_bytes_is_validation(write_unvalidated, name):
    with pytest.raises(write_unvalidated.exceptions.ValidationException) as caught:
        write_unvalidated.create_database(DatabaseName=name)
    assert_error(caught, "ValidationException", 400)


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_table_name_outside_timestreams_alphabet_or_over_256_bytes_is_validation(write_unvalidated, db, name):
    with pytest.raises(write_unvalidated.exceptions.ValidationException) as caught:
        write_unvalidated.create_table(DatabaseName=db, TableName=name)
    assert_error(caught, "ValidationException", 400)


def test_names_of_dots_dashes_underscores_and_256_bytes_are_accepted(write, databases):
    fresh = support.unique("n")
    name = databases.adopt(("a.b-c_" + fresh).ljust(256, "x"))
    assert write.create_database(DatabaseName=name)["Database"]["DatabaseName"] == name
    table = "T.1-a_".ljust(256, "y")
    assert write.create_table(DatabaseName=name, TableName=table)["Table"]["TableName"] == table


def test_update_table_is_visible_in_describe_table_and_rest(write, rest, table):
    updated = write.update_table(
        DatabaseName=table.database,
        TableName=table.table,
        RetentionProperties={"MemoryStoreRetentionPeriodInHours": 12, "MagneticStoreRetentionPeriodInDays": 400},
        MagneticStoreWriteProperties={"EnableMagneticStoreWrites": True},
    )["Table"]
    described = write.describe_table(DatabaseName=table.database, TableName=table.table)["Table"]
    for t in (updated, described):
        assert t["RetentionProperties"] == {
            "MemoryStoreRetentionPeriodInHours": 12,
            "MagneticStoreRetentionPeriodInDays": 400,
        }
        assert t["MagneticStoreWriteProperties"]["EnableMagneticStoreWrites"] is True
        assert t["LastUpdatedTime"] >= t["CreationTime"]
    assert rest.table(table.database, table.table)["retention"] == {
        "memory_store_retention_hours": 12,
        "magnetic_store_retention_days": 400,
        "magnetic_store_writes": True,
    }


def test_update_of_a_missing_table_is_not_found(write, db):
    with pytest.raises(write.exceptions.ResourceNotFoundException) as caught:
        write.update_table(DatabaseName=db, TableName="no_such_table", RetentionProperties=DEFAULT_RETENTION)
    assert_error(caught, "ResourceNotFoundException", 404)


def test_deleted_table_is_not_found_and_its_database_can_go(write, databases):
    db = databases()
    t = create_table(write, db)
    write.delete_table(DatabaseName=db, TableName=t.table)
    with pytest.raises(write.exceptions.ResourceNotFoundException) as caught:
        write.describe_table(DatabaseName=db, TableName=t.table)
    assert_error(caught, "ResourceNotFoundException", 404)
    write.delete_database(DatabaseName=db)


def test_table_created_through_timestream_is_in_rest_and_sql(write, rest, table):
    described = rest.table(table.database, table.table)
    assert (described["database"], described["name"]) == (table.database, table.table)
    assert described["retention"] == {
        "memory_store_retention_hours": 6,
        "magnetic_store_retention_days": 73000,
        "magnetic_store_writes": False,
    }
    listed = rest.query(f'SHOW TABLES FROM "{table.database}"')
    assert [table.table] in listed["rows"]


# --- Tags ------------------------------------------------------------------------------------


def test_tags_given_at_create_are_listed(write, databases):
    db = databases(Tags=[{"Key": "team", "Value": "fleet"}])
    db_arn = write.describe_database(DatabaseName=db)["Database"]["Arn"]
    assert write.list_tags_for_resource(ResourceARN=db_arn)["Tags"] == [{"Key": "team", "Value": "fleet"}]
    name = support.unique("tagged")
    table_arn = write.create_table(
        DatabaseName=db, TableName=name, Tags=[{"Key": "b", "Value": "2"}, {"Key": "a", "Value": ""}]
    )["Table"]["Arn"]
    assert sorted_tags(write.list_tags_for_resource(ResourceARN=table_arn)["Tags"]) == [
        {"Key": "a", "Value": ""},
        {"Key": "b", "Value": "2"},
    ]


@pytest.mark.parametrize("resource", ["database", "table"])
def test_tag_list_untag_on_database_and_table_arns(write, table, resource):
    if resource == "database":
        arn = write.describe_database(DatabaseName=table.database)["Database"]["Arn"]
    else:
        arn = write.describe_table(DatabaseName=table.database, TableName=table.table)["Table"]["Arn"]
    assert write.list_tags_for_resource(ResourceARN=arn)["Tags"] == []
    write.tag_resource(ResourceARN=arn, Tags=[{"Key": "env", "Value": "test"}, {"Key": "owner", "Value": "qa"}])
    write.tag_resource(ResourceARN=arn, Tags=[{"Key": "env", "Value": "prod"}])  # a key is replaced
    assert sorted_tags(write.list_tags_for_resource(ResourceARN=arn)["Tags"]) == [
        {"Key": "env", "Value": "prod"},
        {"Key": "owner", "Value": "qa"},
    ]
    write.untag_resource(ResourceARN=arn, TagKeys=["env"])
    assert write.list_tags_for_resource(ResourceARN=arn)["Tags"] == [{"Key": "owner", "Value": "qa"}]
