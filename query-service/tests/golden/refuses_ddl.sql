DROP TABLE fleet.trucks
