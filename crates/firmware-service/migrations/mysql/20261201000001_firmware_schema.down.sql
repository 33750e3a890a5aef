DROP TABLE IF EXISTS firmware_settings;
DROP TABLE IF EXISTS firmware_upgrade_task_history;
DROP TABLE IF EXISTS firmware_upgrade_tasks;
DROP TABLE IF EXISTS rollouts;
DROP TABLE IF EXISTS firmware;
