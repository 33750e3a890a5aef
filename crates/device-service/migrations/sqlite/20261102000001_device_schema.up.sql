CREATE TABLE devices (
    id                 TEXT PRIMARY KEY NOT NULL,
    name               TEXT NOT NULL,
    device_type        TEXT NOT NULL DEFAULT '',
    owner_id           TEXT NOT NULL,
    metadata           TEXT NOT NULL DEFAULT '{}',
    secret_hash        TEXT NOT NULL,
    online             INTEGER NOT NULL DEFAULT 0,
    last_seen_at       INTEGER,
    status_changed_at  INTEGER NOT NULL DEFAULT 0,
    firmware_version   TEXT NOT NULL DEFAULT '',
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE INDEX idx_devices_owner ON devices (owner_id);
CREATE INDEX idx_devices_type ON devices (device_type);

CREATE TABLE device_tags (
    device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    tag        TEXT NOT NULL,
    PRIMARY KEY (device_id, tag)
);
CREATE INDEX idx_device_tags_tag ON device_tags (tag);

-- One row per device, metric and timestamp; the key makes redelivered
-- telemetry a no-op. kind: 0 number, 1 boolean (num 0/1), 2 text.
CREATE TABLE device_data (
    device_id  TEXT NOT NULL,
    metric     TEXT NOT NULL,
    ts         INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    num        REAL,
    txt        TEXT,
    PRIMARY KEY (device_id, metric, ts)
) WITHOUT ROWID;

CREATE TABLE device_latest (
    device_id  TEXT NOT NULL,
    metric     TEXT NOT NULL,
    ts         INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    num        REAL,
    txt        TEXT,
    PRIMARY KEY (device_id, metric)
);

CREATE TABLE device_status_history (
    device_id  TEXT NOT NULL,
    at         INTEGER NOT NULL,
    online     INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    PRIMARY KEY (device_id, at, online)
);

CREATE TABLE device_commands (
    id               TEXT PRIMARY KEY NOT NULL,
    device_id        TEXT NOT NULL,
    name             TEXT NOT NULL,
    params           TEXT NOT NULL,
    status           TEXT NOT NULL,
    result           TEXT,
    error            TEXT,
    created_by       TEXT NOT NULL,
    idempotency_key  TEXT,
    timeout_s        INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    sent_at          INTEGER,
    completed_at     INTEGER,
    UNIQUE (created_by, idempotency_key)
);
CREATE INDEX idx_device_commands_device ON device_commands (device_id, created_at);
CREATE INDEX idx_device_commands_open ON device_commands (status, expires_at);
