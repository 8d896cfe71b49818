"""DuckDB's side of `make bench-query`: runs each query of a job three times over the same
Parquet files Lodestone's store holds and prints, as one JSON object, each query's median time
in milliseconds and its rows (numbers as floats, so that both engines' answers compare)."""

import decimal
import json
import statistics
import sys
import time

import duckdb


def plain(value):
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return str(value)


def main(job_path):
    with open(job_path) as job_file:
        job = json.load(job_file)
    con = duckdb.connect()
    files = ", ".join("'" + path.replace("'", "''") + "'" for path in job["files"])
    con.execute(f"CREATE VIEW trucks AS SELECT * FROM read_parquet([{files}])")
    answers = {}
    for query in job["queries"]:
        times, rows = [], []
        for _ in range(3):
            started = time.perf_counter()
            rows = con.execute(query["sql"]).fetchall()
            times.append((time.perf_counter() - started) * 1000.0)
        answers[query["name"]] = {"ms": statistics.median(times), "rows": [[plain(v) for v in row] for row in rows]}
    print(json.dumps(answers))


if __name__ == "__main__":
    main(sys.argv[1])
