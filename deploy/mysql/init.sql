-- Runs once, when the MySQL data volume is first initialised (as root).
-- One database per service; the application account (MYSQL_USER, created by
-- the image's entrypoint before this script) gets all rights on the three and
-- nothing else. Tables are created by `wf-iot migrate up`, not here.
CREATE DATABASE IF NOT EXISTS iot_auth_db CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE IF NOT EXISTS iot_device_db CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE IF NOT EXISTS iot_firmware_db CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

GRANT ALL PRIVILEGES ON iot_auth_db.* TO 'wfiot'@'%';
GRANT ALL PRIVILEGES ON iot_device_db.* TO 'wfiot'@'%';
GRANT ALL PRIVILEGES ON iot_firmware_db.* TO 'wfiot'@'%';
FLUSH PRIVILEGES;
