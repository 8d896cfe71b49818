"""Helpers shared by the Timestream-compatible API suite: the stack's settings, clients, names,
records, query pages, raw signed requests, the REST API and Prometheus metrics.

Nothing here knows an answer of the server; it only builds requests and reads responses.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable
from unittest import mock

import boto3
import botocore.auth
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

TARGET_PREFIX = "Timestream_20181101"
SIGNING_NAME = "timestream"
JSON_1_0 = "application/x-amz-json-1.0"
# Timestream renders TIMESTAMP values with nanoseconds, always nine digits (awswrangler's parser
# cuts the last three off and reads the rest with %f, so anything else breaks it).
TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9}$")
NS_PER = {"SECONDS": 10**9, "MILLISECONDS": 10**6, "MICROSECONDS": 10**3, "NANOSECONDS": 1}


# ---------------------------------------------------------------------------------------------
# The stack under test (environment set by the Rust harness)


@dataclass(frozen=True)
class Stack:
    endpoint: str
    ca: str
    region: str
    admin_key: str
    admin_secret: str
    reader_key: str
    reader_secret: str
    bearer: str
    ingest_pids: tuple[int, ...]

    @staticmethod
    def from_env() -> "Stack":
        names = [
            "LODESTONE_TS_ENDPOINT",
            "AWS_CA_BUNDLE",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "LODESTONE_TS_READER_KEY_ID",
            "LODESTONE_TS_READER_SECRET",
            "LODESTONE_BEARER",
            "LODESTONE_INGEST_PIDS",
        ]
        missing = [n for n in names if not os.environ.get(n)]
        if missing:
            pytest.fail(
                "the Timestream suite runs against a started stack; missing environment: " + ", ".join(missing),
                pytrace=False,
            )
        e = os.environ
        return Stack(
            endpoint=e["LODESTONE_TS_ENDPOINT"].rstrip("/"),
            ca=e["AWS_CA_BUNDLE"],
            region=e["AWS_DEFAULT_REGION"],
            admin_key=e["AWS_ACCESS_KEY_ID"],
            admin_secret=e["AWS_SECRET_ACCESS_KEY"],
            reader_key=e["LODESTONE_TS_READER_KEY_ID"],
            reader_secret=e["LODESTONE_TS_READER_SECRET"],
            bearer=e["LODESTONE_BEARER"],
            ingest_pids=tuple(int(pid) for pid in e["LODESTONE_INGEST_PIDS"].split(",")),
        )


def client(
    stack: Stack,
    service: str,
    *,
    key: str | None = None,
    secret: str | None = None,
    validate: bool = True,
    retries: dict | None = None,
    endpoint_url: str | None | bool = True,
):
    """A stock boto3 client for `service` ('timestream-write' or 'timestream-query').

    endpoint_url=True (the default) passes the stack's endpoint explicitly (no discovery);
    endpoint_url=None passes none, so botocore resolves it (AWS_ENDPOINT_URL_* and discovery).
    validate=False turns off botocore's client-side checks (it checks `min` and types, not
    `max` or patterns) so that the server's answer is what a test sees.
    """
    session = boto3.session.Session(
        aws_access_key_id=key or stack.admin_key,
        aws_secret_access_key=secret or stack.admin_secret,
        region_name=stack.region,
    )
    config_args: dict[str, Any] = {"parameter_validation": validate}
    if retries is not None:
        config_args["retries"] = retries
    kwargs: dict[str, Any] = {"config": Config(**config_args), "verify": stack.ca}
    if endpoint_url is True:
        kwargs["endpoint_url"] = stack.endpoint
    elif endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    return session.client(service, **kwargs)


# ---------------------------------------------------------------------------------------------
# Names, times, records


def unique(prefix: str) -> str:
    """A fresh database or table name (Timestream's alphabet: [a-zA-Z0-9_.-])."""
    prefix = re.sub(r"[^a-zA-Z0-9_]", "_", prefix)[:40]
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def qualified(database: str, table: str) -> str:
    return f'"{database}"."{table}"'


def now_ms() -> int:
    return time.time_ns() // 10**6


def ts_string(epoch_ns: int) -> str:
    """Timestream's text of a TIMESTAMP: `YYYY-MM-DD HH:MM:SS.nnnnnnnnn` (UTC)."""
    seconds, ns = divmod(epoch_ns, 10**9)
    day = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)
    return day.strftime("%Y-%m-%d %H:%M:%S") + f".{ns:09d}"


def dims(**values: str) -> list[dict[str, str]]:
    return [{"Name": k, "Value": str(v)} for k, v in values.items()]


def single(dimensions: dict[str, str], name: str, value: str, time_ms: int, kind: str = "DOUBLE", **extra) -> dict:
    """A single-measure record, time in milliseconds unless `extra` says otherwise."""
    record = {
        "Dimensions": dims(**dimensions),
        "MeasureName": name,
        "MeasureValue": str(value),
        "MeasureValueType": kind,
        "Time": str(time_ms),
        "TimeUnit": "MILLISECONDS",
    }
    record.update(extra)
    return record


def multi(
    dimensions: dict[str, str], name: str, measures: Iterable[tuple[str, str, str]], time_ms: int, **extra
) -> dict:
    """A MULTI record: `measures` are (name, value, type)."""
    record = {
        "Dimensions": dims(**dimensions),
        "MeasureName": name,
        "MeasureValueType": "MULTI",
        "MeasureValues": [{"Name": n, "Value": str(v), "Type": t} for n, v, t in measures],
        "Time": str(time_ms),
        "TimeUnit": "MILLISECONDS",
    }
    record.update(extra)
    return record


def write_all(write, database: str, table: str, records: list[dict], batch: int = 100, **kwargs) -> int:
    """WriteRecords in batches of `batch`; returns the sum of RecordsIngested.Total."""
    total = 0
    for start in range(0, len(records), batch):
        answer = write.write_records(
            DatabaseName=database, TableName=table, Records=records[start : start + batch], **kwargs
        )
        total += answer["RecordsIngested"]["Total"]
    return total


# ---------------------------------------------------------------------------------------------
# Errors


def error_of(excinfo) -> tuple[str, int, dict]:
    """(code, HTTP status, whole response) of a botocore ClientError caught by pytest.raises."""
    error: ClientError = excinfo.value
    return error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"], error.response


def assert_error(excinfo, code: str, status: int) -> dict:
    got_code, got_status, response = error_of(excinfo)
    assert (got_code, got_status) == (code, status), response
    assert response["Error"].get("Message"), f"{code} without a Message: {response}"
    return response


def rejected_indexes(excinfo) -> list[int]:
    response = assert_error(excinfo, "RejectedRecordsException", 419)
    rejected = response["RejectedRecords"]
    for r in rejected:
        assert r.get("Reason"), r
    return sorted(r["RecordIndex"] for r in rejected)


# ---------------------------------------------------------------------------------------------
# Query answers


def pages(query, sql: str, page_size: int | None = None) -> list[dict]:
    """Every page of `sql` through botocore's paginator (which fails on a repeated token)."""
    config = {"PageSize": page_size} if page_size else {}
    return list(query.get_paginator("query").paginate(QueryString=sql, PaginationConfig=config))


def datum(d: dict) -> Any:
    """A Datum as plain Python: the ScalarValue string, None for NULL, lists for arrays and
    timeseries ((time, value) pairs), tuples for rows."""
    if d.get("NullValue"):
        return None
    if "ScalarValue" in d:
        return d["ScalarValue"]
    if "ArrayValue" in d:
        return [datum(x) for x in d["ArrayValue"]]
    if "TimeSeriesValue" in d:
        return [(p["Time"], datum(p["Value"])) for p in d["TimeSeriesValue"]]
    if "RowValue" in d:
        return tuple(datum(x) for x in d["RowValue"]["Data"])
    raise AssertionError(f"a Datum with none of Timestream's members: {d}")


def rows(answer_pages: list[dict]) -> list[list[Any]]:
    return [[datum(d) for d in row["Data"]] for page in answer_pages for row in page["Rows"]]


def run(query, sql: str) -> tuple[list[dict], list[list[Any]]]:
    """(ColumnInfo, rows) of `sql`, all pages."""
    answer = pages(query, sql)
    return answer[0]["ColumnInfo"], rows(answer)


def column_names(columns: list[dict]) -> list[str]:
    return [c["Name"] for c in columns]


def scalar_types(columns: list[dict]) -> dict[str, str]:
    return {c["Name"]: c["Type"].get("ScalarType") for c in columns}


def records_by(columns: list[dict], answer_rows: list[list[Any]]) -> list[dict[str, Any]]:
    names = column_names(columns)
    return [dict(zip(names, r)) for r in answer_rows]


# ---------------------------------------------------------------------------------------------
# Raw signed requests (for what a stock client cannot be made to send)


def signed_request(
    stack: Stack,
    operation: str,
    body: dict | bytes,
    *,
    key: str | None = None,
    secret: str | None = None,
    when: dt.datetime | None = None,
    send_body: bytes | None = None,
) -> requests.Response:
    """POST / with `X-Amz-Target: Timestream_20181101.<operation>`, signed by botocore's SigV4Auth
    with (key, secret) (the admin's by default), as of `when` (UTC, default now). `send_body`
    replaces the body after signing."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = AWSRequest(
        method="POST",
        url=stack.endpoint + "/",
        data=data,
        headers={"Content-Type": JSON_1_0, "X-Amz-Target": f"{TARGET_PREFIX}.{operation}"},
    )
    signer = SigV4Auth(Credentials(key or stack.admin_key, secret or stack.admin_secret), SIGNING_NAME, stack.region)
    if when is None:
        signer.add_auth(request)
    else:
        naive_utc = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=naive_utc):
            signer.add_auth(request)
    prepared = request.prepare()
    return requests.post(
        prepared.url,
        data=send_body if send_body is not None else prepared.body,
        headers=dict(prepared.headers),
        verify=stack.ca,
        timeout=30,
    )


def assert_raw_error(response: requests.Response, code: str, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    # botocore strips a `namespace#` prefix, so either form is what clients see as `code`.
    assert body["__type"].split("#")[-1] == code, body
    assert body.get("Message") or body.get("message"), body
    return body


# ---------------------------------------------------------------------------------------------
# The REST API and metrics of the same listener


class Rest:
    def __init__(self, stack: Stack):
        self.base, self.ca = stack.endpoint, stack.ca
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {stack.bearer}"

    def _send(self, method: str, path: str, **kwargs) -> requests.Response:
        # `verify` on each request: a session's own is overridden by REQUESTS_CA_BUNDLE.
        response = self.http.request(method, self.base + path, verify=self.ca, timeout=60, **kwargs)
        assert response.ok, (method, path, response.status_code, response.text)
        return response

    def query(self, sql: str) -> dict:
        return self._send("POST", "/v1/query", json={"sql": sql}).json()

    def table(self, database: str, table: str) -> dict:
        return self._send("GET", f"/v1/databases/{database}/tables/{table}").json()

    def metrics(self) -> str:
        return self._send("GET", "/metrics").text

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(self.metrics(), name, **labels)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels` (Prometheus text format);
    0 when there is none (a counter not yet incremented may be absent)."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if not match or match.group(1) != name:
            continue
        have = dict(_LABEL.findall(match.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total
