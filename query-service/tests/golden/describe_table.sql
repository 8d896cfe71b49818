DESCRIBE fleet.trucks
