-- Entries other services publish on `audit.recorded` carry a unique event
-- id, so a redelivered event is stored once. Entries auth-service writes
-- itself have none (NULLs do not collide in a unique key).
ALTER TABLE audit_log
    ADD COLUMN event_id VARCHAR(36) NULL,
    ADD UNIQUE KEY uq_audit_log_event_id (event_id),
    -- The history of one device, rollout or user (`?target=`).
    ADD KEY idx_audit_log_target (target);
