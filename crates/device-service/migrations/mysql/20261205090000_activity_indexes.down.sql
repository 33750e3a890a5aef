ALTER TABLE device_commands DROP KEY idx_device_commands_created;
ALTER TABLE device_status_history DROP KEY idx_device_status_history_at;
DROP TABLE device_activity;
