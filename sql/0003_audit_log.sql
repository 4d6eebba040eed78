-- The audit log (DESIGN.md §3, invariant 8): one row per state change, written in the same transaction as the
-- change. Append-only for the service: crmd_app may insert and read its own tenant's rows, never update or delete.

CREATE TABLE crm.audit_log (
    tenant_id uuid NOT NULL REFERENCES crm.tenants (tenant_id),
    audit_id bigint GENERATED ALWAYS AS IDENTITY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor_type text NOT NULL CHECK (actor_type IN ('user', 'operator', 'system', 'webhook')),
    actor_id text CHECK (length(actor_id) <= 128),
    action text NOT NULL CHECK (action ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$' AND length(action) <= 64),
    target_type text CHECK (length(target_type) <= 64),
    target_id text CHECK (length(target_id) <= 128),
    ip inet,
    user_agent text CHECK (length(user_agent) <= 512),
    request_id text CHECK (length(request_id) <= 128),
    metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    PRIMARY KEY (tenant_id, audit_id)
);

CREATE INDEX audit_log_by_time ON crm.audit_log (tenant_id, occurred_at DESC);
CREATE INDEX audit_log_by_target ON crm.audit_log (tenant_id, target_type, target_id) WHERE target_id IS NOT NULL;

ALTER TABLE crm.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_log_read ON crm.audit_log FOR SELECT
    USING (tenant_id = crm.current_tenant());
CREATE POLICY audit_log_append ON crm.audit_log FOR INSERT
    WITH CHECK (tenant_id = crm.current_tenant());

-- No UPDATE, DELETE or TRUNCATE: the privilege system, not the application, keeps the log append-only.
GRANT SELECT, INSERT ON crm.audit_log TO crmd_app;
