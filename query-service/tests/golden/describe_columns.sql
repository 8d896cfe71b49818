SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'fleet' AND table_name = 'trucks' ORDER BY ordinal_position
