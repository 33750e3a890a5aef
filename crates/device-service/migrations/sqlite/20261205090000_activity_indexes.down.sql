DROP INDEX idx_device_commands_created;
DROP INDEX idx_device_status_history_at;
DROP TABLE device_activity;
