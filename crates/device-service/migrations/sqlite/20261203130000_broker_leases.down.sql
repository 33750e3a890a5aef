DROP TABLE mqtt_brokers;
DROP INDEX idx_devices_broker;
ALTER TABLE devices DROP COLUMN broker;
