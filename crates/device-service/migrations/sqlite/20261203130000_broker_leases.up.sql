-- Which embedded broker instance holds an online device's connection, and
-- how long each instance's lease runs: a device whose instance stops
-- renewing its lease goes offline.
ALTER TABLE devices ADD COLUMN broker TEXT NULL;
CREATE INDEX idx_devices_broker ON devices (broker);
CREATE TABLE mqtt_brokers (
    id           TEXT PRIMARY KEY NOT NULL,
    lease_until  INTEGER NOT NULL
);
