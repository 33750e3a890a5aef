-- Firmware images. The file lives in the blob store under storage_key (a
-- generated id); (device_type, version) names one image.
CREATE TABLE firmware (
    id             TEXT PRIMARY KEY NOT NULL,
    name           TEXT NOT NULL,
    device_type    TEXT NOT NULL,
    version        TEXT NOT NULL,
    release_notes  TEXT NOT NULL DEFAULT '',
    size           INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    signature      TEXT,
    storage_key    TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    UNIQUE (device_type, version)
);
CREATE INDEX idx_firmware_created ON firmware (created_at);

-- A rollout (kind 'rollout') or single-device upgrade task (kind 'task').
-- next_slot_at paces notifications across every worker (rate limit).
CREATE TABLE rollouts (
    id                         TEXT PRIMARY KEY NOT NULL,
    kind                       TEXT NOT NULL,
    name                       TEXT NOT NULL,
    firmware_id                TEXT NOT NULL,
    firmware_version           TEXT NOT NULL,
    device_type                TEXT NOT NULL,
    state                      TEXT NOT NULL,
    target                     TEXT NOT NULL,
    rate_per_minute            INTEGER NOT NULL,
    failure_threshold_percent  REAL NOT NULL,
    min_finished               INTEGER NOT NULL,
    timeout_secs               INTEGER NOT NULL,
    max_retries                INTEGER NOT NULL,
    retry_backoff_secs         INTEGER NOT NULL,
    start_at                   INTEGER NOT NULL,
    next_slot_at               INTEGER NOT NULL DEFAULT 0,
    reason                     TEXT,
    created_by                 TEXT NOT NULL,
    created_at                 INTEGER NOT NULL,
    updated_at                 INTEGER NOT NULL,
    started_at                 INTEGER,
    finished_at                INTEGER
);
CREATE INDEX idx_rollouts_state ON rollouts (state, start_at);
CREATE INDEX idx_rollouts_firmware ON rollouts (firmware_id);
CREATE INDEX idx_rollouts_kind ON rollouts (kind, created_at);

-- One device's execution of a rollout, and the job queue: workers lease
-- due queued rows (lease_*), and every change is a conditional update on
-- (state, attempts). Its id is the task_id devices see.
CREATE TABLE firmware_upgrade_tasks (
    id                TEXT PRIMARY KEY NOT NULL,
    rollout_id        TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device_id         TEXT NOT NULL,
    state             TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    progress          REAL,
    error             TEXT,
    reported_version  TEXT,
    next_attempt_at   INTEGER NOT NULL,
    deadline_at       INTEGER,
    lease_owner       TEXT,
    lease_token       TEXT,
    lease_until       INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    finished_at       INTEGER,
    UNIQUE (rollout_id, device_id)
);
CREATE INDEX idx_tasks_rollout_state ON firmware_upgrade_tasks (rollout_id, state, next_attempt_at);
CREATE INDEX idx_tasks_deadline ON firmware_upgrade_tasks (state, deadline_at);
CREATE INDEX idx_tasks_device ON firmware_upgrade_tasks (device_id, state);
CREATE INDEX idx_tasks_lease ON firmware_upgrade_tasks (lease_token);

-- Every state change of every execution: who (worker, device, user) and why.
CREATE TABLE firmware_upgrade_task_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     TEXT NOT NULL REFERENCES firmware_upgrade_tasks(id) ON DELETE CASCADE,
    at          INTEGER NOT NULL,
    from_state  TEXT NOT NULL,
    to_state    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX idx_task_history_task ON firmware_upgrade_task_history (task_id, id);

-- Service-wide secrets shared by the API and the workers (the download
-- link key), created on first start.
CREATE TABLE firmware_settings (
    name   TEXT PRIMARY KEY NOT NULL,
    value  TEXT NOT NULL
);
