-- The fleet's activity over time (GET /api/v1/devices/activity) reads
-- telemetry, status changes and commands by time across devices.
ALTER TABLE device_data ADD KEY idx_device_data_ts (ts);
ALTER TABLE device_status_history ADD KEY idx_device_status_history_at (at);
ALTER TABLE device_commands ADD KEY idx_device_commands_created (created_at);
