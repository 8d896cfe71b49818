-- max_rows: 5
SELECT * FROM fleet.trucks
