-- Device state: one shadow document per device (reported, desired and the
-- time each key last changed), the history of its changes, the server
-- attributes operators keep about a device, and fleet shadow jobs with the
-- devices each one targets.
CREATE TABLE device_shadows (
    device_id   TEXT PRIMARY KEY NOT NULL,
    version     INTEGER NOT NULL,
    reported    TEXT NOT NULL,
    desired     TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE device_shadow_history (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id  TEXT NOT NULL,
    version    INTEGER NOT NULL,
    section    TEXT NOT NULL,
    source     TEXT NOT NULL,
    actor      TEXT,
    changes    TEXT NOT NULL,
    at         INTEGER NOT NULL
);
CREATE INDEX idx_device_shadow_history_device ON device_shadow_history (device_id, version);
CREATE TABLE device_attributes (
    device_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (device_id, name)
) WITHOUT ROWID;
CREATE INDEX idx_device_attributes_name ON device_attributes (name, value);
CREATE TABLE shadow_jobs (
    id               TEXT PRIMARY KEY NOT NULL,
    desired          TEXT NOT NULL,
    target           TEXT NOT NULL,
    rate_per_second  INTEGER,
    status           TEXT NOT NULL,
    created_by       TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER
);
CREATE INDEX idx_shadow_jobs_created ON shadow_jobs (created_at);
CREATE TABLE shadow_job_targets (
    job_id      TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    state       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (job_id, device_id)
) WITHOUT ROWID;
CREATE INDEX idx_shadow_job_targets_device ON shadow_job_targets (device_id, state);
CREATE INDEX idx_shadow_job_targets_state ON shadow_job_targets (job_id, state);
