-- The fleet's activity over time (GET /api/v1/devices/activity): telemetry
-- messages counted per device and minute as they are stored (an index on
-- device_data's time would cost every stored value a second write), and
-- status changes and commands read by time.
CREATE TABLE device_activity (
    minute     INTEGER NOT NULL,
    device_id  TEXT NOT NULL,
    messages   INTEGER NOT NULL,
    PRIMARY KEY (minute, device_id)
) WITHOUT ROWID;
CREATE INDEX idx_device_activity_device ON device_activity (device_id);
CREATE INDEX idx_device_status_history_at ON device_status_history (at);
CREATE INDEX idx_device_commands_created ON device_commands (created_at);
