ALTER TABLE audit_log
    DROP KEY idx_audit_log_target,
    DROP KEY uq_audit_log_event_id,
    DROP COLUMN event_id;
