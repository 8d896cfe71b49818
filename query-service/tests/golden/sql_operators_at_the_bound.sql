-- limit: sql_operators_max=4
-- At the bound: four operators (three + and one AND), counted before parsing.
SELECT 1 + 1 + 1 + 1 AS four WHERE true AND true
