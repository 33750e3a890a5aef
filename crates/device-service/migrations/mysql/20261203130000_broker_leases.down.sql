DROP TABLE mqtt_brokers;
ALTER TABLE devices DROP KEY idx_devices_broker, DROP COLUMN broker;
