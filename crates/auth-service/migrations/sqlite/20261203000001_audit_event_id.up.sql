-- Entries other services publish on `audit.recorded` carry a unique event
-- id, so a redelivered event is stored once. Entries auth-service writes
-- itself have none (NULLs do not collide in a unique index).
ALTER TABLE audit_log ADD COLUMN event_id TEXT;
CREATE UNIQUE INDEX idx_audit_log_event_id ON audit_log (event_id);
-- The history of one device, rollout or user (`?target=`).
CREATE INDEX idx_audit_log_target ON audit_log (target);
