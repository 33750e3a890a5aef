-- The fleet's activity over time (GET /api/v1/devices/activity): telemetry
-- messages counted per device and minute as they are stored (an index on
-- device_data's time would cost every stored value a second write), and
-- status changes and commands read by time.
CREATE TABLE device_activity (
    minute     BIGINT NOT NULL,
    device_id  VARCHAR(128) NOT NULL,
    messages   BIGINT NOT NULL,
    PRIMARY KEY (minute, device_id),
    KEY idx_device_activity_device (device_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
ALTER TABLE device_status_history ADD KEY idx_device_status_history_at (at);
ALTER TABLE device_commands ADD KEY idx_device_commands_created (created_at);
