-- The fleet's activity over time (GET /api/v1/devices/activity) reads
-- telemetry, status changes and commands by time across devices.
CREATE INDEX idx_device_data_ts ON device_data (ts);
CREATE INDEX idx_device_status_history_at ON device_status_history (at);
CREATE INDEX idx_device_commands_created ON device_commands (created_at);
