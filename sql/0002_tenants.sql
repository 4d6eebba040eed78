-- Tenants and the tenant context (DESIGN.md §1, §3 invariant 5).
--
-- Every unit of work that touches tenant data sets app.tenant_id transaction-locally; crm.current_tenant() reads
-- it. When it is unset the function returns NULL and every policy below matches nothing: a forgotten tenant
-- context fails closed. A malformed value raises an error instead of matching anything.

CREATE FUNCTION crm.current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;
GRANT EXECUTE ON FUNCTION crm.current_tenant() TO crmd_app;

-- For Citus the tenant id is the distribution column; the tenants table is keyed by it like every other table.
CREATE TABLE crm.tenants (
    tenant_id uuid PRIMARY KEY,
    name text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE crm.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenants_isolation ON crm.tenants
    USING (tenant_id = crm.current_tenant())
    WITH CHECK (tenant_id = crm.current_tenant());

GRANT SELECT, INSERT, UPDATE ON crm.tenants TO crmd_app;
