SELECT date_trunc('hour', time) AS hour, count(*) AS records FROM fleet.trucks GROUP BY 1
