DROP TABLE shadow_job_targets;
DROP TABLE shadow_jobs;
DROP TABLE device_attributes;
DROP TABLE device_shadow_history;
DROP TABLE device_shadows;
