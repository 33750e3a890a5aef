DROP TABLE device_commands;
DROP TABLE device_status_history;
DROP TABLE device_latest;
DROP TABLE device_data;
DROP TABLE device_tags;
DROP TABLE devices;
