-- An array unnests into one column, the comma form too.
SELECT t.name, x
FROM (SELECT 'a' AS name, [3, 1, 2] AS numbers) AS t, UNNEST(t.numbers) AS u(x)
ORDER BY x
