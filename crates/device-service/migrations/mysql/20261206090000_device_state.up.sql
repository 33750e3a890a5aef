-- Device state: one shadow document per device (reported, desired and the
-- time each key last changed), the history of its changes, the server
-- attributes operators keep about a device, and fleet shadow jobs with the
-- devices each one targets.
CREATE TABLE device_shadows (
    device_id   VARCHAR(128) NOT NULL PRIMARY KEY,
    version     BIGINT NOT NULL,
    reported    MEDIUMTEXT NOT NULL,
    desired     MEDIUMTEXT NOT NULL,
    metadata    MEDIUMTEXT NOT NULL,
    updated_at  BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE device_shadow_history (
    id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    device_id  VARCHAR(128) NOT NULL,
    version    BIGINT NOT NULL,
    section    VARCHAR(16) NOT NULL,
    source     VARCHAR(16) NOT NULL,
    actor      VARCHAR(128),
    changes    MEDIUMTEXT NOT NULL,
    at         BIGINT NOT NULL,
    KEY idx_device_shadow_history_device (device_id, version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE device_attributes (
    device_id   VARCHAR(128) NOT NULL,
    name        VARCHAR(64) NOT NULL,
    value       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (device_id, name),
    KEY idx_device_attributes_name (name, value(255))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE shadow_jobs (
    id               VARCHAR(64) NOT NULL PRIMARY KEY,
    desired          MEDIUMTEXT NOT NULL,
    target           MEDIUMTEXT NOT NULL,
    rate_per_second  BIGINT,
    status           VARCHAR(16) NOT NULL,
    created_by       VARCHAR(128) NOT NULL,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    KEY idx_shadow_jobs_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE shadow_job_targets (
    job_id      VARCHAR(64) NOT NULL,
    device_id   VARCHAR(128) NOT NULL,
    state       VARCHAR(16) NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (job_id, device_id),
    KEY idx_shadow_job_targets_device (device_id, state),
    KEY idx_shadow_job_targets_state (job_id, state)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
