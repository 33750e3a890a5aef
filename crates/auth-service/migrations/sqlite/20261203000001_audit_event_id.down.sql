DROP INDEX idx_audit_log_target;
DROP INDEX idx_audit_log_event_id;
ALTER TABLE audit_log DROP COLUMN event_id;
