CREATE TABLE devices (
    id                 VARCHAR(128) NOT NULL PRIMARY KEY,
    name               VARCHAR(200) NOT NULL,
    device_type        VARCHAR(64) NOT NULL DEFAULT '',
    owner_id           VARCHAR(36) NOT NULL,
    metadata           TEXT NOT NULL,
    secret_hash        CHAR(64) NOT NULL,
    online             BIGINT NOT NULL DEFAULT 0,
    last_seen_at       BIGINT NULL,
    status_changed_at  BIGINT NOT NULL DEFAULT 0,
    firmware_version   VARCHAR(64) NOT NULL DEFAULT '',
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    KEY idx_devices_owner (owner_id),
    KEY idx_devices_type (device_type)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE device_tags (
    device_id  VARCHAR(128) NOT NULL,
    tag        VARCHAR(64) NOT NULL,
    PRIMARY KEY (device_id, tag),
    KEY idx_device_tags_tag (tag),
    CONSTRAINT fk_device_tags_device FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE device_data (
    device_id  VARCHAR(128) NOT NULL,
    metric     VARCHAR(64) NOT NULL,
    ts         BIGINT NOT NULL,
    kind       BIGINT NOT NULL,
    num        DOUBLE NULL,
    txt        TEXT NULL,
    PRIMARY KEY (device_id, metric, ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE device_latest (
    device_id  VARCHAR(128) NOT NULL,
    metric     VARCHAR(64) NOT NULL,
    ts         BIGINT NOT NULL,
    kind       BIGINT NOT NULL,
    num        DOUBLE NULL,
    txt        TEXT NULL,
    PRIMARY KEY (device_id, metric)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE device_status_history (
    device_id  VARCHAR(128) NOT NULL,
    at         BIGINT NOT NULL,
    online     BIGINT NOT NULL,
    reason     VARCHAR(32) NOT NULL,
    PRIMARY KEY (device_id, at, online)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE device_commands (
    id               VARCHAR(36) NOT NULL PRIMARY KEY,
    device_id        VARCHAR(128) NOT NULL,
    name             VARCHAR(64) NOT NULL,
    params           TEXT NOT NULL,
    status           VARCHAR(16) NOT NULL,
    result           TEXT NULL,
    error            VARCHAR(500) NULL,
    created_by       VARCHAR(36) NOT NULL,
    idempotency_key  VARCHAR(128) NULL,
    timeout_s        BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    sent_at          BIGINT NULL,
    completed_at     BIGINT NULL,
    UNIQUE KEY uq_device_commands_idempotency (created_by, idempotency_key),
    KEY idx_device_commands_device (device_id, created_at),
    KEY idx_device_commands_open (status, expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
