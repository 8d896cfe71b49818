"""The AWS CLI (Debian's `awscli` package, CLI v2) against the stack with `--endpoint-url`: it
takes the keys and region from the environment and the CA from AWS_CA_BUNDLE."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

import support

MINUTE_MS = 60_000


def aws_executable() -> str:
    """Debian's /usr/bin/aws first (a pip-installed CLI v1 may come earlier on PATH)."""
    for candidate in (os.environ.get("LODESTONE_AWS_CLI"), "/usr/bin/aws", shutil.which("aws")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("no AWS CLI: install Debian's awscli package", pytrace=False)


class Cli:
    """Runs `aws ... --endpoint-url <stack> --output json` in a clean environment."""

    def __init__(self, stack, home):
        self.executable, self.endpoint = aws_executable(), stack.endpoint
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.env.update(
            AWS_ACCESS_KEY_ID=stack.admin_key,
            AWS_SECRET_ACCESS_KEY=stack.admin_secret,
            AWS_DEFAULT_REGION=stack.region,
            AWS_CA_BUNDLE=stack.ca,
            AWS_PAGER="",
            # No developer's ~/.aws settings may change what is sent.
            AWS_CONFIG_FILE=str(home / "config"),
            AWS_SHARED_CREDENTIALS_FILE=str(home / "credentials"),
        )

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        command = [self.executable, *args, "--endpoint-url", self.endpoint, "--output", "json"]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=180)
        if ok:
            assert done.returncode == 0, (command, done.returncode, done.stdout, done.stderr)
        return done

    def json(self, *args: str) -> dict:
        return json.loads(self(*args).stdout)


@pytest.fixture(scope="module")
def aws(stack, tmp_path_factory) -> Cli:
    return Cli(stack, tmp_path_factory.mktemp("aws-cli-home"))


def test_cli_create_database_prints_the_database(aws, write, databases):
    name = databases.adopt(support.unique("cli"))
    out = aws.json("timestream-write", "create-database", "--database-name", name)
    assert out["Database"]["DatabaseName"] == name
    assert out["Database"]["Arn"].endswith(f":database/{name}")
    assert write.describe_database(DatabaseName=name)["Database"]["DatabaseName"] == name


def test_cli_list_databases_exits_0(aws, db):
    out = aws.json("timestream-write", "list-databases")
    assert db in [d["DatabaseName"] for d in out["Databases"]]


def test_cli_create_table_write_records_then_query(aws, db):
    table = support.unique("cli_t")
    out = aws.json("timestream-write", "create-table", "--database-name", db, "--table-name", table)
    assert out["Table"]["TableStatus"] == "ACTIVE"
    t = support.now_ms() - MINUTE_MS
    common = {"MeasureName": "temperature", "MeasureValueType": "DOUBLE", "TimeUnit": "MILLISECONDS", "Time": str(t)}
    records = [
        {"Dimensions": [{"Name": "sensor", "Value": "a"}], "MeasureValue": "1.5"},
        {"Dimensions": [{"Name": "sensor", "Value": "b"}], "MeasureValue": "2.5"},
    ]
    out = aws.json(
        "timestream-write", "write-records",
        "--database-name", db, "--table-name", table,
        "--common-attributes", json.dumps(common),
        "--records", json.dumps(records),
    )  # fmt: skip
    assert out["RecordsIngested"]["Total"] == 2

    sql = f'SELECT sensor, time, "measure_value::double" FROM {support.qualified(db, table)} ORDER BY sensor'
    out = aws.json("timestream-query", "query", "--query-string", sql)
    assert [c["Name"] for c in out["ColumnInfo"]] == ["sensor", "time", "measure_value::double"]
    got = [[d["ScalarValue"] for d in row["Data"]] for row in out["Rows"]]
    assert [(s, tm, float(v)) for s, tm, v in got] == [
        ("a", support.ts_string(t * 10**6), 1.5),
        ("b", support.ts_string(t * 10**6), 2.5),
    ]


def test_cli_query_follows_next_tokens_with_page_size(aws, write, table):
    """The CLI paginates Query itself: --page-size becomes MaxRows and the pages are merged."""
    t = support.now_ms() - MINUTE_MS
    records = [support.single({"i": str(i)}, "n", str(i), t, kind="BIGINT") for i in range(25)]
    support.write_all(write, table.database, table.table, records)
    sql = f'SELECT "measure_value::bigint" FROM {table.sql}'
    out = aws.json("timestream-query", "query", "--query-string", sql, "--page-size", "10")
    assert sorted(int(r["Data"][0]["ScalarValue"]) for r in out["Rows"]) == list(range(25))
    assert "NextToken" not in out


def test_cli_service_error_exits_non_zero_and_names_the_code(aws):
    done = aws("timestream-write", "describe-database", "--database-name", support.unique("missing"), ok=False)
    assert done.returncode != 0
    assert "ResourceNotFoundException" in done.stderr, done.stderr
