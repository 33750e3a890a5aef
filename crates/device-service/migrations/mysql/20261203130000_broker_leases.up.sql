-- Which embedded broker instance holds an online device's connection, and
-- how long each instance's lease runs: a device whose instance stops
-- renewing its lease goes offline.
ALTER TABLE devices ADD COLUMN broker VARCHAR(64) NULL, ADD KEY idx_devices_broker (broker);
CREATE TABLE mqtt_brokers (
    id           VARCHAR(64) NOT NULL PRIMARY KEY,
    lease_until  BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
