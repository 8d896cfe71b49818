-- limit: sql_operators_max=4
-- One operator past the bound: refused before it is parsed. A chain of operators parses into a
-- tree as deep as it is long (1,000 terms overflowed the service's stack when it was walked).
SELECT 1 + 1 + 1 + 1 + 1 AS five WHERE true AND true
