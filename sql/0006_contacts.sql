-- Contacts and brands (issue #5; DESIGN.md §3 invariants 1, 5, 8, 12 and §5).
--
-- Every rule lives here, where concurrency cannot break it:
--   * uniqueness of a live contact's e-mail and a live brand's domain per tenant: partial unique indexes, and
--     create-or-get through INSERT … ON CONFLICT on them (never "check, then insert");
--   * the search document: generated columns over the contact's own columns, two of which (brand_name, tag_text)
--     are kept by triggers from the brands and contact_tags tables, so the GIN indexes cannot drift from the data;
--   * the lead score: a BEFORE trigger computes it from the tenant's weights (crm.lead_scoring) on every write;
--   * validation (types, lengths, the tenant's custom field definitions), idempotency keys, the audit rows, and
--     the all-or-nothing of atomic bulk operations: the API functions below, one transaction per request.
--
-- crmd calls two entry points as crmd_app under row-level security with the session's tenant set:
-- crm.api_write (every change, one prepared statement) and crm.api_read (lists and settings). The contact read
-- by id, the hot path, is a prepared statement of its own in app/contacts. Functions run as the caller (no
-- SECURITY DEFINER): the policies apply to all they do.

-- pg_trgm (substring and prefix matching) is a trusted extension shipped with the server. It is created by the
-- migration login (which needs CREATE on the database), not by crmd_owner, which does not own the database.
SET LOCAL ROLE NONE;
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA crm;
SET LOCAL ROLE crmd_owner;

INSERT INTO crm.role_permissions (role, permission)
SELECT r.role, p.permission
FROM (VALUES ('owner', '{settings.read,settings.write}'::text[]), ('admin', '{settings.read,settings.write}'),
             ('member', '{settings.read}'), ('viewer', '{settings.read}')) AS r (role, perms),
     unnest(r.perms) AS p (permission)
ON CONFLICT DO NOTHING;

---------------------------------------------------------------------------------------------------------------------
-- Tables
--
-- Each primary key is added after the table's other indexes, on purpose. Planning a look-up by primary key on a
-- table that is still empty (every new database, every new tenant's first writes), PostgreSQL finds every index
-- that starts with tenant_id equally cheap and keeps the last one it considers, which is the newest index; the
-- plan is then cached for the life of the connection (foreign-key checks, triggers, PL/pgSQL), and every look-up
-- scans the tenant's whole range of, say, contacts_by_score. Measured: each 1,000-contact import batch slower than
-- the last (400 → 720 ms over 100,000 contacts). The newest index being the primary key makes the tie go its way.

CREATE TABLE crm.brands (
    tenant_id uuid NOT NULL REFERENCES crm.tenants (tenant_id),
    brand_id uuid NOT NULL DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    -- the registrable domain, as lib/domain (libpsl) computes it: lower-case ASCII (punycode)
    domain text CHECK (length(domain) <= 253 AND domain ~ '^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$'),
    website text CHECK (char_length(website) BETWEEN 1 AND 2048),
    source text NOT NULL DEFAULT 'manual' CHECK (source IN ('manual', 'import', 'gmail')),
    created_by uuid,
    version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    sort_name text GENERATED ALWAYS AS (lower(name)) STORED
);
CREATE UNIQUE INDEX brands_live_domain ON crm.brands (tenant_id, domain) WHERE deleted_at IS NULL AND domain IS NOT NULL;
CREATE INDEX brands_by_name ON crm.brands (tenant_id, sort_name, brand_id);
CREATE INDEX brands_by_created ON crm.brands (tenant_id, created_at, brand_id);
CREATE INDEX brands_by_updated ON crm.brands (tenant_id, updated_at, brand_id);
CREATE INDEX brands_name_trgm ON crm.brands USING gin (sort_name crm.gin_trgm_ops);
ALTER TABLE crm.brands ADD PRIMARY KEY (tenant_id, brand_id);

CREATE TABLE crm.contacts (
    tenant_id uuid NOT NULL REFERENCES crm.tenants (tenant_id),
    contact_id uuid NOT NULL DEFAULT gen_random_uuid(),
    email text NOT NULL CHECK (email = lower(btrim(email)) AND octet_length(email) <= 254 AND email ~ '^[^@\s]+@[^@\s]+$'),
    first_name text CHECK (char_length(first_name) <= 100),
    last_name text CHECK (char_length(last_name) <= 100),
    display_name text CHECK (char_length(display_name) <= 200),
    phone text CHECK (char_length(phone) <= 32),
    title text CHECK (char_length(title) <= 200),
    brand_id uuid,
    owner_id uuid,
    lifecycle_stage text CHECK (lifecycle_stage IN ('subscriber', 'lead', 'marketing_qualified_lead',
                                                    'sales_qualified_lead', 'opportunity', 'customer', 'evangelist',
                                                    'other')),
    lead_score integer NOT NULL DEFAULT 0,
    source text NOT NULL DEFAULT 'manual' CHECK (source IN ('manual', 'import', 'gmail')),
    custom_fields jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(custom_fields) = 'object'),
    last_activity_at timestamptz,
    -- whether the address's domain is a free or disposable mail provider (crmd's list, lib/data): an input of the
    -- lead score that the database cannot compute itself
    email_free boolean NOT NULL DEFAULT false,
    -- kept by triggers: the brand's name and the tag names (sorted, ", "-separated; names never hold a comma)
    brand_name text,
    tag_text text NOT NULL DEFAULT '',
    version integer NOT NULL DEFAULT 1,
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    sort_name text GENERATED ALWAYS AS (lower(coalesce(display_name,
        nullif(btrim(coalesce(first_name, '') || ' ' || coalesce(last_name, '')), ''), email))) STORED,
    -- words of the names, the address (whole and split at @ and .), the brand and the tags
    search_doc tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('simple'::regconfig, coalesce(first_name, '') || ' ' || coalesce(last_name, '') || ' '
                                                    || coalesce(display_name, '')), 'A')
        || setweight(to_tsvector('simple'::regconfig, email || ' ' || translate(email, '@.+_-', '     ')), 'B')
        || setweight(to_tsvector('simple'::regconfig, coalesce(brand_name, '') || ' ' || tag_text), 'C')) STORED,
    -- the same as one lower-case string, for substring matching through pg_trgm
    search_text text GENERATED ALWAYS AS (lower(coalesce(first_name, '') || ' ' || coalesce(last_name, '') || ' '
        || coalesce(display_name, '') || ' ' || email || ' ' || coalesce(brand_name, '') || ' ' || tag_text)) STORED,
    FOREIGN KEY (tenant_id, brand_id) REFERENCES crm.brands (tenant_id, brand_id),
    FOREIGN KEY (tenant_id, owner_id) REFERENCES crm.memberships (tenant_id, user_id)
);
CREATE UNIQUE INDEX contacts_live_email ON crm.contacts (tenant_id, email) WHERE deleted_at IS NULL;
CREATE INDEX contacts_by_updated ON crm.contacts (tenant_id, updated_at, contact_id);
CREATE INDEX contacts_by_created ON crm.contacts (tenant_id, created_at, contact_id);
CREATE INDEX contacts_by_name ON crm.contacts (tenant_id, sort_name, contact_id);
CREATE INDEX contacts_by_score ON crm.contacts (tenant_id, lead_score, contact_id);
CREATE INDEX contacts_by_brand ON crm.contacts (tenant_id, brand_id, updated_at, contact_id) WHERE brand_id IS NOT NULL;
CREATE INDEX contacts_by_owner ON crm.contacts (tenant_id, owner_id) WHERE owner_id IS NOT NULL;
CREATE INDEX contacts_search_doc ON crm.contacts USING gin (search_doc);
CREATE INDEX contacts_search_trgm ON crm.contacts USING gin (search_text crm.gin_trgm_ops);
ALTER TABLE crm.contacts ADD PRIMARY KEY (tenant_id, contact_id);

CREATE TABLE crm.tags (
    tenant_id uuid NOT NULL REFERENCES crm.tenants (tenant_id),
    tag_id uuid NOT NULL DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (name = lower(btrim(name)) AND char_length(name) BETWEEN 1 AND 64
                              AND name !~ '[[:cntrl:],]'),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);
ALTER TABLE crm.tags ADD PRIMARY KEY (tenant_id, tag_id);

CREATE TABLE crm.contact_tags (
    tenant_id uuid NOT NULL,
    contact_id uuid NOT NULL,
    tag_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES crm.contacts (tenant_id, contact_id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, tag_id) REFERENCES crm.tags (tenant_id, tag_id) ON DELETE CASCADE
);
CREATE INDEX contact_tags_by_tag ON crm.contact_tags (tenant_id, tag_id, contact_id);
ALTER TABLE crm.contact_tags ADD PRIMARY KEY (tenant_id, contact_id, tag_id);

-- Lead-score weights per tenant; a tenant without a row has crm.lead_weights' defaults.
CREATE TABLE crm.lead_scoring (
    tenant_id uuid PRIMARY KEY REFERENCES crm.tenants (tenant_id),
    work_email integer NOT NULL CHECK (work_email BETWEEN 0 AND 100),
    has_phone integer NOT NULL CHECK (has_phone BETWEEN 0 AND 100),
    has_title integer NOT NULL CHECK (has_title BETWEEN 0 AND 100),
    recent_activity integer NOT NULL CHECK (recent_activity BETWEEN 0 AND 100),
    recent_activity_days integer NOT NULL CHECK (recent_activity_days BETWEEN 1 AND 365),
    stages jsonb NOT NULL CHECK (jsonb_typeof(stages) = 'object'),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crm.custom_field_defs (
    tenant_id uuid NOT NULL REFERENCES crm.tenants (tenant_id),
    name text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    type text NOT NULL CHECK (type IN ('text', 'number', 'boolean', 'date')),
    max_length integer CHECK (max_length BETWEEN 1 AND 10000 AND (type = 'text') = (max_length IS NOT NULL)),
    required boolean NOT NULL DEFAULT false,
    label text CHECK (char_length(label) <= 100),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- Idempotency keys (DESIGN.md §5, Stripe's semantics): the first answer to a POST carrying the key, kept 24 hours.
-- The fingerprint binds the key to the user, method, path and body that first used it.
CREATE TABLE crm.idempotency_keys (
    tenant_id uuid NOT NULL REFERENCES crm.tenants (tenant_id),
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint text NOT NULL,
    status integer NOT NULL,
    etag text,
    location text,
    body text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_by_age ON crm.idempotency_keys (tenant_id, created_at);

-- Row-level security: each tenant sees and writes only its own rows; the owner role (migrations, operators'
-- maintenance) sees everything.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['brands', 'contacts', 'tags', 'contact_tags', 'lead_scoring', 'custom_field_defs',
                             'idempotency_keys'] LOOP
        EXECUTE format('ALTER TABLE crm.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE crm.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY %I ON crm.%I TO crmd_owner USING (true) WITH CHECK (true)', t || '_owner_all', t);
        EXECUTE format('CREATE POLICY %I ON crm.%I TO crmd_app USING (tenant_id = crm.current_tenant())'
                       ' WITH CHECK (tenant_id = crm.current_tenant())', t || '_tenant', t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE ON crm.brands, crm.contacts, crm.lead_scoring TO crmd_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON crm.tags, crm.contact_tags, crm.custom_field_defs, crm.idempotency_keys
    TO crmd_app;

---------------------------------------------------------------------------------------------------------------------
-- Triggers that keep derived columns true whatever writes the rows

-- The tenant's weights, or the defaults when it has set none (the one place the defaults are written).
CREATE FUNCTION crm.lead_weights(p_tenant uuid) RETURNS crm.lead_scoring
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
    w crm.lead_scoring;
BEGIN
    SELECT * INTO w FROM crm.lead_scoring WHERE tenant_id = p_tenant;
    IF NOT FOUND THEN
        w := ROW(p_tenant, 10, 5, 5, 10, 30,
                 '{"subscriber": 0, "lead": 5, "marketing_qualified_lead": 10, "sales_qualified_lead": 15,
                   "opportunity": 20, "customer": 25, "evangelist": 25, "other": 0}'::jsonb, NULL);
    END IF;
    RETURN w;
END
$$;

-- The score of a contact under weights w: documented in README ("Lead score").
CREATE FUNCTION crm.lead_score(w crm.lead_scoring, p_email_free boolean, p_phone text, p_title text,
                               p_last_activity timestamptz, p_stage text) RETURNS integer
    LANGUAGE sql STABLE
    AS $$
SELECT CASE WHEN p_email_free THEN 0 ELSE w.work_email END
       + CASE WHEN p_phone IS NULL THEN 0 ELSE w.has_phone END
       + CASE WHEN p_title IS NULL THEN 0 ELSE w.has_title END
       + CASE WHEN p_last_activity > now() - make_interval(days => w.recent_activity_days) THEN w.recent_activity
              ELSE 0 END
       + coalesce((w.stages ->> p_stage)::integer, 0)
$$;

-- Before every write of a contact: the brand's name (for the search document) and the lead score.
CREATE FUNCTION crm.contacts_derive() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    w crm.lead_scoring;
BEGIN
    IF TG_OP = 'INSERT' OR NEW.brand_id IS DISTINCT FROM OLD.brand_id THEN
        -- FOR SHARE: a rename of the brand in progress is waited for and its new name copied; otherwise this row
        -- could keep the old name, which the rename's own update of the brand's contacts did not see.
        NEW.brand_name := NULL;
        SELECT b.name INTO NEW.brand_name FROM crm.brands b
        WHERE b.tenant_id = NEW.tenant_id AND b.brand_id = NEW.brand_id FOR SHARE;
    END IF;
    -- Shared with every other writer of the tenant's contacts, exclusive to a change of the weights: a contact
    -- written while new weights are being applied waits for them (crm.lead_scoring_put).
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('crm.lead_scoring:' || NEW.tenant_id, 0));
    -- The weights in a variable first: crm.lead_score is inlined only when its arguments are cheap.
    w := crm.lead_weights(NEW.tenant_id);
    NEW.lead_score := crm.lead_score(w, NEW.email_free, NEW.phone, NEW.title, NEW.last_activity_at, NEW.lifecycle_stage);
    RETURN NEW;
END
$$;
CREATE TRIGGER contacts_derive BEFORE INSERT OR UPDATE ON crm.contacts
    FOR EACH ROW EXECUTE FUNCTION crm.contacts_derive();

-- A renamed brand renames itself in its contacts' search documents.
CREATE FUNCTION crm.brands_renamed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- The contacts show the brand's name: a new version (ETag) of each.
    UPDATE crm.contacts SET brand_name = NEW.name, version = version + 1, updated_at = now()
    WHERE tenant_id = NEW.tenant_id AND brand_id = NEW.brand_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER brands_renamed AFTER UPDATE OF name ON crm.brands
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name) EXECUTE FUNCTION crm.brands_renamed();

-- Tags added or removed (by any statement, one row or a thousand) rewrite the contacts' tag_text once each, by
-- primary key. Every query here is a key look-up, and enable_seqscan is off so that it stays one: its plans are
-- made from statistics that a bulk import quickly outgrows (measured: a sequential scan of contact_tags for every
-- tagged contact once the table had been analyzed empty, each import batch slower than the last).
CREATE FUNCTION crm.contact_tags_changed() RETURNS trigger
    LANGUAGE plpgsql
    SET enable_seqscan = off
    AS $$
DECLARE
    x record;
BEGIN
    FOR x IN SELECT DISTINCT tenant_id, contact_id FROM changed LOOP
        UPDATE crm.contacts c
        SET tag_text = coalesce((SELECT string_agg(t.name, ', ' ORDER BY t.name)
                                 FROM crm.contact_tags ct JOIN crm.tags t ON t.tenant_id = ct.tenant_id AND t.tag_id = ct.tag_id
                                 WHERE ct.tenant_id = x.tenant_id AND ct.contact_id = x.contact_id), '')
        WHERE c.tenant_id = x.tenant_id AND c.contact_id = x.contact_id;
    END LOOP;
    RETURN NULL;
END
$$;
CREATE TRIGGER contact_tags_added AFTER INSERT ON crm.contact_tags
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION crm.contact_tags_changed();
CREATE TRIGGER contact_tags_removed AFTER DELETE ON crm.contact_tags
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION crm.contact_tags_changed();

---------------------------------------------------------------------------------------------------------------------
-- Small helpers

CREATE FUNCTION crm.ts(t timestamptz) RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;

CREATE FUNCTION crm.is_uuid(s text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT s ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' $$;

-- One addr-spec (dot-atom local part, a dotted host name) of at most 254 bytes; s is already trimmed and lower-case.
CREATE FUNCTION crm.email_valid(s text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$
SELECT octet_length(s) <= 254 AND octet_length(split_part(s, '@', 1)) <= 64
       AND s ~ '^[a-z0-9!#$%&''*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&''*+/=?^_`{|}~-]+)*@([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$'
$$;

-- A tag name as stored (trimmed, lower-case), or NULL when s cannot be one.
CREATE FUNCTION crm.tag_name(s text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
SELECT CASE WHEN char_length(lower(btrim(s))) BETWEEN 1 AND 64 AND s !~ '[[:cntrl:],]' THEN lower(btrim(s)) END
$$;

CREATE FUNCTION crm.lifecycle_stages() RETURNS text[]
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT '{subscriber,lead,marketing_qualified_lead,sales_qualified_lead,opportunity,customer,evangelist,other}'::text[] $$;

-- An RFC 3339 date-time (what crmd accepts on the wire), or NULL when s is not one.
CREATE FUNCTION crm.rfc3339(s text) RETURNS timestamptz
    LANGUAGE plpgsql STABLE
    AS $$
BEGIN
    IF s !~ '^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$' THEN
        RETURN NULL;
    END IF;
    RETURN s::timestamptz;
EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format OR invalid_time_zone_displacement_value THEN
    RETURN NULL;
END
$$;

CREATE FUNCTION crm.is_date(s text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    RETURN s ~ '^\d{4}-\d{2}-\d{2}$' AND to_char(s::date, 'YYYY-MM-DD') = s;
EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
    RETURN false;
END
$$;

-- A JSON integer in [lo, hi].
CREATE FUNCTION crm.json_int_in(v jsonb, lo integer, hi integer) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT jsonb_typeof(v) = 'number' AND v::text ~ '^-?\d{1,9}$' AND v::text::integer BETWEEN lo AND hi $$;

CREATE FUNCTION crm.ferr(p_field text, p_message text) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT jsonb_build_array(jsonb_build_object('field', p_field, 'message', p_message)) $$;

-- A problem document (RFC 9457) without `instance`, which crmd adds per request.
CREATE FUNCTION crm.problem(p_status integer, p_slug text, p_title text, p_detail text, p_extra jsonb DEFAULT '{}')
    RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    AS $$
SELECT jsonb_strip_nulls(jsonb_build_object('type', 'urn:crmd:problem:' || p_slug, 'title', p_title, 'status',
                                            p_status, 'detail', p_detail)) || coalesce(p_extra, '{}')
$$;

CREATE FUNCTION crm.invalid(p_errors jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    AS $$
SELECT crm.problem(400, 'validation-failed', 'Validation failed', 'The request has invalid fields; see errors.',
                   jsonb_build_object('errors', p_errors))
$$;

-- Whether an If-Match header value (NULL: none) admits the representation of this version (RFC 9110 §13.1.1:
-- strong comparison, so a weak tag never matches).
CREATE FUNCTION crm.if_match(p_header text, p_version integer) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    RETURN p_header IS NULL OR btrim(p_header) = '*'
           OR '"' || p_version || '"' = ANY (SELECT btrim(x) FROM regexp_split_to_table(p_header, ',') x);
END
$$;

-- The result of one operation on one record.
CREATE TYPE crm.op_result AS (
    status integer,
    id uuid,
    version integer,
    body jsonb -- a problem (status ≥ 400), or the whole answer of operations that are not about one record
);

CREATE FUNCTION crm.op_problem(p_status integer, p_slug text, p_title text, p_detail text, p_extra jsonb DEFAULT '{}')
    RETURNS crm.op_result
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT ROW(p_status, NULL::uuid, NULL::integer, crm.problem(p_status, p_slug, p_title, p_detail, p_extra))::crm.op_result $$;

CREATE FUNCTION crm.precondition_failed(p_what text, p_version integer) RETURNS crm.op_result
    LANGUAGE sql IMMUTABLE
    AS $$
SELECT crm.op_problem(412, 'precondition-failed', 'Precondition failed',
                      'The ' || p_what || ' has changed since the version named in If-Match; it is now version '
                      || p_version || '.', jsonb_build_object('current_version', p_version))
$$;

CREATE FUNCTION crm.not_found(p_what text) RETURNS crm.op_result
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT crm.op_problem(404, 'not-found', 'Not found', 'No ' || p_what || ' of this tenant has this id.') $$;

-- An audit row for the request being served (crm.api_write sets the actor and request context). PL/pgSQL, not SQL:
-- a LANGUAGE sql function that cannot be inlined is planned again on every call, and bulk operations call this
-- once per item.
CREATE FUNCTION crm.audit(p_action text, p_target_type text, p_target_id uuid, p_meta jsonb DEFAULT '{}')
    RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_actor text := nullif(current_setting('crm.actor', true), '');
BEGIN
    INSERT INTO crm.audit_log (tenant_id, actor_type, actor_id, action, target_type, target_id, ip, user_agent,
                               request_id, metadata)
    VALUES (crm.current_tenant(), CASE WHEN v_actor IS NULL THEN 'system' ELSE 'user' END, v_actor, p_action,
            p_target_type, p_target_id::text, nullif(current_setting('crm.ip', true), '')::inet,
            nullif(current_setting('crm.ua', true), ''), nullif(current_setting('crm.rid', true), ''),
            coalesce(p_meta, '{}'));
END
$$;

-- JSON of a string member: NULL when acceptable, else the message. Lengths are in characters.
CREATE FUNCTION crm.string_error(v jsonb, p_max integer, p_nullable boolean) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
SELECT CASE
           WHEN jsonb_typeof(v) = 'null' THEN CASE WHEN p_nullable THEN NULL ELSE 'must be a string' END
           WHEN jsonb_typeof(v) <> 'string' THEN CASE WHEN p_nullable THEN 'must be a string or null' ELSE 'must be a string' END
           WHEN char_length(v #>> '{}') > p_max THEN 'is longer than ' || p_max || ' characters'
       END
$$;

---------------------------------------------------------------------------------------------------------------------
-- Representations

-- PL/pgSQL, like every function here that runs a query: a LANGUAGE sql function that is not inlined (a whole-row
-- argument, a sub-select) is parsed and planned again on every call, which was most of the database's work per
-- GET /v1/contacts/{id}.
CREATE FUNCTION crm.contact_json(c crm.contacts) RETURNS json
    LANGUAGE plpgsql STABLE
    AS $$
BEGIN
    RETURN json_build_object(
        'id', c.contact_id, 'email', c.email, 'first_name', c.first_name, 'last_name', c.last_name,
        'display_name', c.display_name, 'phone', c.phone, 'title', c.title, 'brand_id', c.brand_id,
        'brand', (SELECT json_build_object('id', b.brand_id, 'name', b.name, 'domain', b.domain)
                  FROM crm.brands b WHERE b.tenant_id = c.tenant_id AND b.brand_id = c.brand_id),
        'owner_id', c.owner_id, 'lifecycle_stage', c.lifecycle_stage, 'lead_score', c.lead_score, 'source', c.source,
        'custom_fields', c.custom_fields, 'tags', to_json(string_to_array(c.tag_text, ', ')),
        'last_activity_at', crm.ts(c.last_activity_at), 'version', c.version, 'created_at', crm.ts(c.created_at),
        'updated_at', crm.ts(c.updated_at), 'deleted_at', crm.ts(c.deleted_at));
END
$$;

CREATE FUNCTION crm.brand_json(b crm.brands) RETURNS json
    LANGUAGE plpgsql STABLE
    AS $$
BEGIN
    RETURN json_build_object(
        'id', b.brand_id, 'name', b.name, 'domain', b.domain, 'website', b.website, 'source', b.source,
        'created_by', b.created_by, 'version', b.version, 'created_at', crm.ts(b.created_at),
        'updated_at', crm.ts(b.updated_at), 'deleted_at', crm.ts(b.deleted_at));
END
$$;

-- Whether a cursor's key reads as the sort key's type (a forged cursor is a 400, not a failed cast).
CREATE FUNCTION crm.cursor_key_ok(p_key text, p_type text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    CASE p_type
        WHEN 'integer' THEN
            RETURN p_key ~ '^-?\d{1,9}$';
        WHEN 'timestamptz' THEN
            RETURN p_key::timestamptz IS NOT NULL;
        ELSE
            RETURN true;
    END CASE;
EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format OR invalid_time_zone_displacement_value THEN
    RETURN false;
END
$$;

-- Opaque keyset cursors: base64url of a JSON array (sort, key, id).
CREATE FUNCTION crm.cursor_encode(p jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT translate(encode(convert_to(p::text, 'UTF8'), 'base64'), E'+/=\n', '-_') $$;

CREATE FUNCTION crm.cursor_decode(s text) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE
    AS $$
DECLARE
    v jsonb;
BEGIN
    IF s IS NULL OR length(s) > 700 OR s !~ '^[A-Za-z0-9_-]+$' THEN
        RETURN NULL;
    END IF;
    v := convert_from(decode(translate(s, '-_', '+/') || repeat('=', (4 - length(s) % 4) % 4), 'base64'), 'UTF8')::jsonb;
    RETURN CASE WHEN jsonb_typeof(v) = 'array' AND jsonb_array_length(v) = 3 AND jsonb_typeof(v -> 0) = 'string'
                     AND jsonb_typeof(v -> 1) = 'string' AND crm.is_uuid(v ->> 2) THEN v END;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;

---------------------------------------------------------------------------------------------------------------------
-- Validation: every problem of a request at once, as {field, message} entries (DESIGN.md §3 invariant 12)

-- The tenant's custom fields in cf (an object) against its definitions. p_create: required fields must be present.
CREATE FUNCTION crm.custom_field_errors(cf jsonb, p_create boolean, p_prefix text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
    e jsonb := '[]';
    k text;
    v jsonb;
    d crm.custom_field_defs;
    f text;
BEGIN
    FOR k, v IN SELECT * FROM jsonb_each(cf) LOOP
        f := p_prefix || 'custom_fields.' || k;
        SELECT * INTO d FROM crm.custom_field_defs WHERE tenant_id = crm.current_tenant() AND name = k;
        IF NOT FOUND THEN
            -- null removes a value, also one whose definition has been deleted since
            IF jsonb_typeof(v) <> 'null' THEN
                e := e || crm.ferr(f, 'is not a defined custom field');
            END IF;
        ELSIF jsonb_typeof(v) = 'null' THEN
            IF d.required THEN
                e := e || crm.ferr(f, 'is required');
            END IF;
        ELSIF d.type = 'text' THEN
            IF jsonb_typeof(v) <> 'string' THEN
                e := e || crm.ferr(f, 'must be a string');
            ELSIF char_length(v #>> '{}') > d.max_length THEN
                e := e || crm.ferr(f, 'is longer than ' || d.max_length || ' characters');
            END IF;
        ELSIF d.type = 'number' AND jsonb_typeof(v) <> 'number' THEN
            e := e || crm.ferr(f, 'must be a number');
        ELSIF d.type = 'boolean' AND jsonb_typeof(v) <> 'boolean' THEN
            e := e || crm.ferr(f, 'must be a boolean');
        ELSIF d.type = 'date' AND (jsonb_typeof(v) <> 'string' OR NOT crm.is_date(v #>> '{}')) THEN
            e := e || crm.ferr(f, 'must be a date (YYYY-MM-DD)');
        END IF;
    END LOOP;
    IF p_create THEN
        FOR d IN SELECT * FROM crm.custom_field_defs
                 WHERE tenant_id = crm.current_tenant() AND required AND NOT (cf ? name) ORDER BY name LOOP
            e := e || crm.ferr(p_prefix || 'custom_fields.' || d.name, 'is required');
        END LOOP;
    END IF;
    RETURN e;
END
$$;

-- A contact's fields (a create body, or a merge patch when p_create is false).
CREATE FUNCTION crm.contact_errors(p jsonb, p_create boolean, p_prefix text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
    e jsonb := '[]';
    k text;
    v jsonb;
    f text;
    m text;
    s text;
BEGIN
    IF jsonb_typeof(p) IS DISTINCT FROM 'object' THEN
        RETURN crm.ferr(coalesce(nullif(rtrim(p_prefix, '.'), ''), 'body'), 'must be an object');
    END IF;
    IF p_create AND NOT p ? 'email' THEN
        e := e || crm.ferr(p_prefix || 'email', 'is required');
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(p) ORDER BY 1 LOOP
        f := p_prefix || k;
        m := NULL;
        s := v #>> '{}';
        CASE k
            WHEN 'email' THEN
                m := crm.string_error(v, 254, false);
                IF m IS NULL AND NOT crm.email_valid(lower(btrim(s))) THEN
                    m := 'is not a valid e-mail address';
                END IF;
            WHEN 'first_name', 'last_name' THEN
                m := crm.string_error(v, 100, true);
            WHEN 'display_name', 'title' THEN
                m := crm.string_error(v, 200, true);
            WHEN 'phone' THEN
                m := crm.string_error(v, 32, true);
                IF m IS NULL AND s IS NOT NULL AND (s !~ '^[0-9 +().\-/]+$' OR length(regexp_replace(s, '\D', '', 'g')) < 3) THEN
                    m := 'must be a telephone number (digits, spaces, + ( ) . - /, at least 3 digits)';
                END IF;
            WHEN 'brand_id' THEN
                m := crm.string_error(v, 36, true);
                IF m IS NULL AND s IS NOT NULL THEN
                    IF NOT crm.is_uuid(s) THEN
                        m := 'must be a UUID';
                    ELSIF NOT EXISTS (SELECT FROM crm.brands b WHERE b.tenant_id = crm.current_tenant()
                                      AND b.brand_id = s::uuid AND b.deleted_at IS NULL) THEN
                        m := 'no such brand';
                    END IF;
                END IF;
            WHEN 'owner_id' THEN
                m := crm.string_error(v, 36, true);
                IF m IS NULL AND s IS NOT NULL THEN
                    IF NOT crm.is_uuid(s) THEN
                        m := 'must be a UUID';
                    ELSIF NOT EXISTS (SELECT FROM crm.memberships ms WHERE ms.tenant_id = crm.current_tenant()
                                      AND ms.user_id = s::uuid AND ms.status = 'active') THEN
                        m := 'no such user';
                    END IF;
                END IF;
            WHEN 'lifecycle_stage' THEN
                m := crm.string_error(v, 64, true);
                IF m IS NULL AND s IS NOT NULL AND NOT s = ANY (crm.lifecycle_stages()) THEN
                    m := 'must be one of: ' || array_to_string(crm.lifecycle_stages(), ', ');
                END IF;
            WHEN 'source' THEN
                IF NOT p_create THEN
                    m := 'cannot be changed';
                ELSE
                    m := crm.string_error(v, 16, false);
                    IF m IS NULL AND s NOT IN ('manual', 'import', 'gmail') THEN
                        m := 'must be one of: manual, import, gmail';
                    END IF;
                END IF;
            WHEN 'last_activity_at' THEN
                m := crm.string_error(v, 40, true);
                IF m IS NULL AND s IS NOT NULL AND crm.rfc3339(s) IS NULL THEN
                    m := 'must be an RFC 3339 date-time';
                END IF;
            WHEN 'custom_fields' THEN
                IF jsonb_typeof(v) = 'null' THEN
                    e := e || crm.custom_field_errors('{}', true, p_prefix); -- clearing all: required ones stay required
                ELSIF jsonb_typeof(v) <> 'object' THEN
                    m := 'must be an object or null';
                ELSE
                    e := e || crm.custom_field_errors(v, p_create, p_prefix);
                END IF;
            WHEN 'tags' THEN
                IF NOT p_create THEN
                    m := 'cannot be changed here (use the tag endpoints)';
                ELSIF jsonb_typeof(v) <> 'array' OR jsonb_array_length(v) > 50 THEN
                    m := 'must be an array of at most 50 tag names';
                ELSIF EXISTS (SELECT FROM jsonb_array_elements(v) t
                              WHERE jsonb_typeof(t) <> 'string' OR crm.tag_name(t #>> '{}') IS NULL) THEN
                    m := 'must hold tag names (1 to 64 characters, no control characters or commas)';
                END IF;
            ELSE
                m := 'is not a known field';
        END CASE;
        IF m IS NOT NULL THEN
            e := e || crm.ferr(f, m);
        END IF;
    END LOOP;
    IF p_create AND NOT p ? 'custom_fields' THEN
        e := e || crm.custom_field_errors('{}', true, p_prefix);
    END IF;
    RETURN e;
END
$$;

---------------------------------------------------------------------------------------------------------------------
-- Contacts

-- Attaches tags (names already normalised) to contacts, creating the tags the tenant does not have yet. Returns
-- the number of new (contact, tag) pairs.
CREATE FUNCTION crm.tags_attach(p_ids uuid[], p_names text[]) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    n integer;
BEGIN
    INSERT INTO crm.tags (tenant_id, name)
    SELECT crm.current_tenant(), t FROM unnest(p_names) t ORDER BY 1
    ON CONFLICT (tenant_id, name) DO NOTHING;
    INSERT INTO crm.contact_tags (tenant_id, contact_id, tag_id)
    SELECT crm.current_tenant(), c, t.tag_id
    FROM unnest(p_ids) c CROSS JOIN crm.tags t
    WHERE t.tenant_id = crm.current_tenant() AND t.name = ANY (p_names)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Creates a contact from a validated-here body, or finds the live contact that has its address: 201 (created),
-- 200 (p_upsert and found) or 409 naming the existing contact; 400 when the body is invalid. The unique index
-- decides (INSERT … ON CONFLICT DO NOTHING), so concurrent creators of one address get one contact. p_free: the
-- free-mail domains among the request's addresses (crmd's list).
CREATE FUNCTION crm.contact_insert(p jsonb, p_free text[], p_upsert boolean, p_prefix text) RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
DECLARE
    e jsonb := crm.contact_errors(p, true, p_prefix);
    v_email text;
    r crm.op_result;
BEGIN
    IF e <> '[]' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(e));
    END IF;
    v_email := lower(btrim(p ->> 'email'));
    -- A conflicting contact deleted between the insert and the look-up is rare; try again then.
    FOR attempt IN 1..3 LOOP
        INSERT INTO crm.contacts (tenant_id, email, first_name, last_name, display_name, phone, title, brand_id,
                                  owner_id, lifecycle_stage, source, custom_fields, last_activity_at, email_free,
                                  created_by)
        VALUES (crm.current_tenant(), v_email, p ->> 'first_name', p ->> 'last_name', p ->> 'display_name',
                p ->> 'phone', p ->> 'title', (p ->> 'brand_id')::uuid, (p ->> 'owner_id')::uuid,
                p ->> 'lifecycle_stage', coalesce(p ->> 'source', 'manual'),
                coalesce(jsonb_strip_nulls(p -> 'custom_fields'), '{}'), crm.rfc3339(p ->> 'last_activity_at'),
                split_part(v_email, '@', 2) = ANY (coalesce(p_free, '{}')),
                nullif(current_setting('crm.actor', true), '')::uuid)
        ON CONFLICT (tenant_id, email) WHERE deleted_at IS NULL DO NOTHING
        RETURNING contact_id, version INTO r.id, r.version;
        IF r.id IS NOT NULL THEN
            IF jsonb_array_length(coalesce(p -> 'tags', '[]')) > 0 THEN
                PERFORM crm.tags_attach(ARRAY[r.id],
                                        ARRAY(SELECT DISTINCT crm.tag_name(t) FROM jsonb_array_elements_text(p -> 'tags') t));
            END IF;
            PERFORM crm.audit('contact.created', 'contact', r.id,
                              jsonb_build_object('source', coalesce(p ->> 'source', 'manual')));
            r.status := 201;
            RETURN r;
        END IF;
        SELECT contact_id, version INTO r.id, r.version FROM crm.contacts
        WHERE tenant_id = crm.current_tenant() AND email = v_email AND deleted_at IS NULL;
        IF FOUND THEN
            IF p_upsert THEN
                r.status := 200;
                RETURN r;
            END IF;
            RETURN crm.op_problem(409, 'duplicate', 'Duplicate',
                                  'A live contact of this tenant already has this e-mail address.',
                                  jsonb_build_object('existing_id', r.id));
        END IF;
    END LOOP;
    RAISE EXCEPTION 'a contact insert kept conflicting' USING ERRCODE = 'serialization_failure';
END
$$;

-- The live contact with this address other than p_except, if any.
CREATE FUNCTION crm.contact_with_email(p_email text, p_except uuid) RETURNS uuid
    LANGUAGE plpgsql STABLE
    AS $$
BEGIN
    RETURN (SELECT contact_id FROM crm.contacts
            WHERE tenant_id = crm.current_tenant() AND email = p_email AND deleted_at IS NULL AND contact_id <> p_except);
END
$$;

CREATE FUNCTION crm.duplicate_contact(p_existing uuid) RETURNS crm.op_result
    LANGUAGE sql IMMUTABLE
    AS $$
SELECT crm.op_problem(409, 'duplicate', 'Duplicate', 'A live contact of this tenant already has this e-mail address.',
                      jsonb_build_object('existing_id', p_existing))
$$;

-- Writes a contact's changeable fields as n holds them, with the next version.
CREATE FUNCTION crm.contact_write(n crm.contacts) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    UPDATE crm.contacts
    SET email = n.email, email_free = n.email_free, first_name = n.first_name, last_name = n.last_name,
        display_name = n.display_name, phone = n.phone, title = n.title, brand_id = n.brand_id, owner_id = n.owner_id,
        lifecycle_stage = n.lifecycle_stage, last_activity_at = n.last_activity_at, custom_fields = n.custom_fields,
        version = n.version + 1, updated_at = now()
    WHERE tenant_id = n.tenant_id AND contact_id = n.contact_id;
END
$$;

-- Look-ups of one row by id name no other condition, deleted_at included: with statistics of an empty or young table
-- the planner would otherwise take the partial live-email index and scan the whole tenant for the id.

-- Applies a JSON merge patch (RFC 7396) to a live contact: 200 (also when nothing changes: no new version), 400,
-- 404, 409 (address of another live contact) or 412 (If-Match). The audit row names the changed fields and, for
-- custom fields, their names only.
CREATE FUNCTION crm.contact_patch(p_id uuid, p jsonb, p_if_match text, p_free text[], p_prefix text)
    RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
DECLARE
    e jsonb := crm.contact_errors(p, false, p_prefix);
    o crm.contacts;
    n crm.contacts;
    v_changed text[];
    v_other uuid;
BEGIN
    IF e <> '[]' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(e));
    END IF;
    SELECT * INTO o FROM crm.contacts
    WHERE tenant_id = crm.current_tenant() AND contact_id = p_id FOR UPDATE;
    IF NOT FOUND OR o.deleted_at IS NOT NULL THEN
        RETURN crm.not_found('contact');
    END IF;
    IF NOT crm.if_match(p_if_match, o.version) THEN
        RETURN crm.precondition_failed('contact', o.version);
    END IF;
    n := o;
    IF p ? 'email' THEN
        n.email := lower(btrim(p ->> 'email'));
        n.email_free := split_part(n.email, '@', 2) = ANY (coalesce(p_free, '{}'));
    END IF;
    IF p ? 'first_name' THEN n.first_name := p ->> 'first_name'; END IF;
    IF p ? 'last_name' THEN n.last_name := p ->> 'last_name'; END IF;
    IF p ? 'display_name' THEN n.display_name := p ->> 'display_name'; END IF;
    IF p ? 'phone' THEN n.phone := p ->> 'phone'; END IF;
    IF p ? 'title' THEN n.title := p ->> 'title'; END IF;
    IF p ? 'brand_id' THEN n.brand_id := (p ->> 'brand_id')::uuid; END IF;
    IF p ? 'owner_id' THEN n.owner_id := (p ->> 'owner_id')::uuid; END IF;
    IF p ? 'lifecycle_stage' THEN n.lifecycle_stage := p ->> 'lifecycle_stage'; END IF;
    IF p ? 'last_activity_at' THEN n.last_activity_at := crm.rfc3339(p ->> 'last_activity_at'); END IF;
    IF jsonb_typeof(p -> 'custom_fields') = 'null' THEN
        n.custom_fields := '{}';
    ELSIF p ? 'custom_fields' THEN
        n.custom_fields := jsonb_strip_nulls(o.custom_fields || (p -> 'custom_fields'));
    END IF;
    -- Plain expressions, not a query: this runs once per item of a bulk update.
    v_changed := array_remove(ARRAY[
        CASE WHEN o.email IS DISTINCT FROM n.email THEN 'email' END,
        CASE WHEN o.first_name IS DISTINCT FROM n.first_name THEN 'first_name' END,
        CASE WHEN o.last_name IS DISTINCT FROM n.last_name THEN 'last_name' END,
        CASE WHEN o.display_name IS DISTINCT FROM n.display_name THEN 'display_name' END,
        CASE WHEN o.phone IS DISTINCT FROM n.phone THEN 'phone' END,
        CASE WHEN o.title IS DISTINCT FROM n.title THEN 'title' END,
        CASE WHEN o.brand_id IS DISTINCT FROM n.brand_id THEN 'brand_id' END,
        CASE WHEN o.owner_id IS DISTINCT FROM n.owner_id THEN 'owner_id' END,
        CASE WHEN o.lifecycle_stage IS DISTINCT FROM n.lifecycle_stage THEN 'lifecycle_stage' END,
        CASE WHEN o.last_activity_at IS DISTINCT FROM n.last_activity_at THEN 'last_activity_at' END], NULL);
    IF o.custom_fields <> n.custom_fields THEN
        v_changed := v_changed || ARRAY(
            SELECT 'custom_fields.' || coalesce(a.key, b.key)
            FROM jsonb_each(o.custom_fields) a FULL JOIN jsonb_each(n.custom_fields) b ON a.key = b.key
            WHERE a.value IS DISTINCT FROM b.value ORDER BY 1);
    END IF;
    IF cardinality(v_changed) = 0 THEN
        RETURN ROW(200, o.contact_id, o.version, NULL::jsonb);
    END IF;
    IF n.email <> o.email THEN
        v_other := crm.contact_with_email(n.email, o.contact_id);
        IF v_other IS NOT NULL THEN
            RETURN crm.duplicate_contact(v_other);
        END IF;
    END IF;
    IF n.email = o.email THEN
        PERFORM crm.contact_write(n);
    ELSE
        -- A subtransaction only for address changes (a bulk update of other fields takes none): an address taken
        -- by a transaction that committed after the look-up above is this item's 409, not the whole request's.
        BEGIN
            PERFORM crm.contact_write(n);
        EXCEPTION WHEN unique_violation THEN
            RETURN crm.duplicate_contact(crm.contact_with_email(n.email, o.contact_id));
        END;
    END IF;
    PERFORM crm.audit('contact.updated', 'contact', o.contact_id, jsonb_build_object('fields', to_jsonb(v_changed)));
    RETURN ROW(200, o.contact_id, o.version + 1, NULL::jsonb);
END
$$;

CREATE FUNCTION crm.contact_delete(p_id uuid, p_if_match text) RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
DECLARE
    o crm.contacts;
BEGIN
    SELECT * INTO o FROM crm.contacts
    WHERE tenant_id = crm.current_tenant() AND contact_id = p_id FOR UPDATE;
    IF NOT FOUND OR o.deleted_at IS NOT NULL THEN
        RETURN crm.not_found('contact');
    END IF;
    IF NOT crm.if_match(p_if_match, o.version) THEN
        RETURN crm.precondition_failed('contact', o.version);
    END IF;
    UPDATE crm.contacts SET deleted_at = now(), updated_at = now(), version = o.version + 1
    WHERE tenant_id = o.tenant_id AND contact_id = o.contact_id;
    PERFORM crm.audit('contact.deleted', 'contact', o.contact_id);
    RETURN ROW(204, o.contact_id, o.version + 1, NULL::jsonb);
END
$$;

-- Restores a deleted contact unless a live one has taken its address meanwhile (409 naming it). The partial
-- unique index is the guard; the look-up only gives the better answer.
CREATE FUNCTION crm.contact_restore(p_id uuid, p_if_match text) RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
DECLARE
    o crm.contacts;
    v_other uuid;
BEGIN
    SELECT * INTO o FROM crm.contacts WHERE tenant_id = crm.current_tenant() AND contact_id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN crm.not_found('contact');
    END IF;
    IF NOT crm.if_match(p_if_match, o.version) THEN
        RETURN crm.precondition_failed('contact', o.version);
    END IF;
    IF o.deleted_at IS NULL THEN
        RETURN ROW(200, o.contact_id, o.version, NULL::jsonb);
    END IF;
    v_other := crm.contact_with_email(o.email, o.contact_id);
    IF v_other IS NOT NULL THEN
        RETURN crm.duplicate_contact(v_other);
    END IF;
    BEGIN
        UPDATE crm.contacts SET deleted_at = NULL, updated_at = now(), version = o.version + 1
        WHERE tenant_id = o.tenant_id AND contact_id = o.contact_id;
    EXCEPTION WHEN unique_violation THEN
        -- taken by a transaction that committed after the look-up above
        RETURN crm.duplicate_contact(crm.contact_with_email(o.email, o.contact_id));
    END;
    PERFORM crm.audit('contact.restored', 'contact', o.contact_id);
    RETURN ROW(200, o.contact_id, o.version + 1, NULL::jsonb);
END
$$;

-- Adds (p_add) or removes a tag of a live contact: 204 either way, a new version only when something changed.
CREATE FUNCTION crm.contact_tag(p_id uuid, p_tag text, p_add boolean, p_field text, p_if_match text)
    RETURNS crm.op_result
    LANGUAGE plpgsql
    SET enable_seqscan = off -- key look-ups only (see contact_tags_changed)
    AS $$
DECLARE
    v_name text := crm.tag_name(p_tag);
    v_version integer;
    v_deleted timestamptz;
    n integer;
BEGIN
    IF v_name IS NULL THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(crm.ferr(p_field,
                   'must be a tag name (1 to 64 characters, no control characters or commas)')));
    END IF;
    SELECT version, deleted_at INTO v_version, v_deleted FROM crm.contacts
    WHERE tenant_id = crm.current_tenant() AND contact_id = p_id FOR UPDATE;
    IF NOT FOUND OR v_deleted IS NOT NULL THEN
        RETURN crm.not_found('contact');
    END IF;
    IF NOT crm.if_match(p_if_match, v_version) THEN
        RETURN crm.precondition_failed('contact', v_version);
    END IF;
    IF p_add THEN
        n := crm.tags_attach(ARRAY[p_id], ARRAY[v_name]);
    ELSE
        DELETE FROM crm.contact_tags ct USING crm.tags t
        WHERE ct.tenant_id = crm.current_tenant() AND ct.contact_id = p_id AND t.tenant_id = ct.tenant_id
          AND t.tag_id = ct.tag_id AND t.name = v_name;
        GET DIAGNOSTICS n = ROW_COUNT;
    END IF;
    IF n > 0 THEN
        v_version := v_version + 1;
        UPDATE crm.contacts SET version = v_version, updated_at = now()
        WHERE tenant_id = crm.current_tenant() AND contact_id = p_id;
        PERFORM crm.audit(CASE WHEN p_add THEN 'contact.tagged' ELSE 'contact.untagged' END, 'contact', p_id,
                          jsonb_build_object('tag', v_name));
    END IF;
    RETURN ROW(204, p_id, v_version, NULL::jsonb);
END
$$;

-- POST /v1/contacts/bulk. Atomic: every item in one subtransaction, rolled back when any item fails (422 naming
-- the first failing item by index; nothing written). Partial: every item reported. Either way one audit row for the batch besides the
-- items' own rows, and the answer says exactly what happened to each item.
CREATE FUNCTION crm.contacts_bulk(p jsonb, p_free text[]) RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
DECLARE
    e jsonb := '[]';
    k text;
    v_op text := p ->> 'op';
    v_mode text := coalesce(p ->> 'mode', 'atomic');
    v_list jsonb;
    v_field text;
    v_n integer;
    v_item jsonb;
    r crm.op_result;
    v_results jsonb[] := '{}';
    v_ok integer := 0;
    v_failed_index integer;
    v_failed crm.op_result;
    v_order integer[];
    v_index integer;
BEGIN
    IF jsonb_typeof(p) IS DISTINCT FROM 'object' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(crm.ferr('body', 'must be an object')));
    END IF;
    FOR k IN SELECT jsonb_object_keys(p) ORDER BY 1 LOOP
        IF k NOT IN ('op', 'mode', 'items', 'ids', 'tag') THEN
            e := e || crm.ferr(k, 'is not a known field');
        END IF;
    END LOOP;
    IF v_op IS NULL OR jsonb_typeof(p -> 'op') <> 'string'
       OR v_op NOT IN ('create', 'update', 'delete', 'restore', 'tag', 'untag') THEN
        e := e || crm.ferr('op', 'must be one of: create, update, delete, restore, tag, untag');
    END IF;
    IF jsonb_typeof(coalesce(p -> 'mode', '"atomic"')) <> 'string' OR v_mode NOT IN ('atomic', 'partial') THEN
        e := e || crm.ferr('mode', 'must be one of: atomic, partial');
    END IF;
    v_field := CASE WHEN v_op IN ('create', 'update') THEN 'items' ELSE 'ids' END;
    v_list := p -> v_field;
    IF p ? (CASE v_field WHEN 'items' THEN 'ids' ELSE 'items' END) AND v_op IS NOT NULL THEN
        e := e || crm.ferr(CASE v_field WHEN 'items' THEN 'ids' ELSE 'items' END, 'is not used by op ' || v_op);
    END IF;
    IF v_list IS NULL THEN
        e := e || crm.ferr(v_field, 'is required');
    ELSIF jsonb_typeof(v_list) <> 'array' OR jsonb_array_length(v_list) = 0 THEN
        e := e || crm.ferr(v_field, 'must be an array of 1 to 1000 entries');
    ELSIF jsonb_array_length(v_list) > 1000 THEN
        e := e || crm.ferr(v_field, 'has more than 1000 entries (at most 1000)');
    ELSIF v_field = 'ids' THEN
        e := e || coalesce((SELECT jsonb_agg(jsonb_build_object('field', 'ids[' || (i - 1) || ']', 'message', 'must be a UUID'))
                            FROM jsonb_array_elements(v_list) WITH ORDINALITY x (id, i)
                            WHERE jsonb_typeof(id) <> 'string' OR NOT crm.is_uuid(id #>> '{}')), '[]');
    END IF;
    IF v_op IN ('tag', 'untag') THEN
        IF jsonb_typeof(p -> 'tag') IS DISTINCT FROM 'string' OR crm.tag_name(p ->> 'tag') IS NULL THEN
            e := e || crm.ferr('tag', 'must be a tag name (1 to 64 characters, no control characters or commas)');
        END IF;
    ELSIF p ? 'tag' AND v_op IS NOT NULL THEN
        e := e || crm.ferr('tag', 'is not used by op ' || v_op);
    END IF;
    IF e <> '[]' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(e));
    END IF;

    v_n := jsonb_array_length(v_list);
    -- Lock the batch's contacts up front in id order: two batches touching the same contacts in different orders
    -- then wait for each other instead of deadlocking.
    IF v_op <> 'create' THEN
        PERFORM FROM crm.contacts c
        WHERE c.tenant_id = crm.current_tenant()
          AND c.contact_id = ANY (ARRAY(SELECT (CASE WHEN v_op = 'update' THEN x ->> 'id' ELSE x #>> '{}' END)::uuid
                                        FROM jsonb_array_elements(v_list) x
                                        WHERE crm.is_uuid(CASE WHEN v_op = 'update' THEN x ->> 'id' ELSE x #>> '{}' END)))
        ORDER BY c.contact_id FOR UPDATE;
    END IF;
    -- The batch's tag names first, in name order, and creates in address order: two batches that share addresses
    -- or tag names then take their locks in the same order and wait for each other instead of deadlocking. Results
    -- are reported by index whatever the order of work.
    IF v_op = 'create' THEN
        INSERT INTO crm.tags (tenant_id, name)
        SELECT DISTINCT crm.current_tenant(), crm.tag_name(t)
        FROM jsonb_array_elements(v_list) x, jsonb_array_elements_text(CASE WHEN jsonb_typeof(x -> 'tags') = 'array'
                                                                            THEN x -> 'tags' END) t
        WHERE crm.tag_name(t) IS NOT NULL ORDER BY 2
        ON CONFLICT (tenant_id, name) DO NOTHING;
    ELSIF v_op = 'tag' THEN
        INSERT INTO crm.tags (tenant_id, name) VALUES (crm.current_tenant(), crm.tag_name(p ->> 'tag'))
        ON CONFLICT (tenant_id, name) DO NOTHING;
    END IF;
    v_order := ARRAY(SELECT x.ord - 1 FROM jsonb_array_elements(v_list) WITH ORDINALITY x (item, ord)
                     ORDER BY CASE v_op WHEN 'create' THEN lower(btrim(x.item ->> 'email'))
                                        WHEN 'update' THEN x.item ->> 'id' ELSE x.item #>> '{}' END, x.ord);
    BEGIN
        FOREACH v_index IN ARRAY v_order LOOP
            v_item := v_list -> v_index;
            r := CASE v_op
                     WHEN 'create' THEN crm.contact_insert(v_item, p_free, false, 'items[' || v_index || '].')
                     WHEN 'update' THEN crm.bulk_update_item(v_item, p_free, v_index)
                     WHEN 'delete' THEN crm.contact_delete((v_item #>> '{}')::uuid, NULL)
                     WHEN 'restore' THEN crm.contact_restore((v_item #>> '{}')::uuid, NULL)
                     ELSE crm.contact_tag((v_item #>> '{}')::uuid, p ->> 'tag', v_op = 'tag', 'tag', NULL)
                 END;
            IF r.status >= 400 THEN
                -- Atomic: the work goes on to the end, so that the answer names the first failing item by index
                -- (the work runs in another order, see above); then everything is undone.
                IF v_mode = 'atomic' AND (v_failed_index IS NULL OR v_index < v_failed_index) THEN
                    v_failed_index := v_index;
                    v_failed := r;
                END IF;
                v_results := v_results || jsonb_build_object('index', v_index, 'status', r.status, 'error', r.body - 'status');
            ELSE
                v_ok := v_ok + 1;
                v_results := v_results || jsonb_build_object('index', v_index, 'status', r.status, 'id', r.id);
            END IF;
        END LOOP;
        IF v_failed_index IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'CRMBK', MESSAGE = 'atomic bulk item failed';
        END IF;
    EXCEPTION WHEN SQLSTATE 'CRMBK' THEN
        -- Everything the batch wrote is undone; the failing item's problem is the answer.
        PERFORM crm.audit('contact.bulk_' || v_op, 'contact', NULL,
                          jsonb_build_object('mode', v_mode, 'items', v_n, 'succeeded', 0, 'failed', v_n - v_ok,
                                             'failed_index', v_failed_index));
        RETURN crm.op_problem(422, 'bulk-failed', 'Bulk operation failed',
                              'Item ' || v_failed_index || ' failed, so nothing was written (atomic mode).',
                              jsonb_build_object('index', v_failed_index, 'item_status', v_failed.status)
                              || (v_failed.body - ARRAY['type', 'title', 'status', 'detail'])
                              || jsonb_build_object('item_detail', v_failed.body -> 'detail'));
    END;
    PERFORM crm.audit('contact.bulk_' || v_op, 'contact', NULL,
                      jsonb_build_object('mode', v_mode, 'items', v_n, 'succeeded', v_ok, 'failed', v_n - v_ok));
    RETURN ROW(200, NULL::uuid, NULL::integer, jsonb_build_object('op', v_op, 'mode', v_mode, 'succeeded', v_ok, 'failed', v_n - v_ok,
                                                   'results', (SELECT jsonb_agg(x ORDER BY (x ->> 'index')::integer)
                                                               FROM unnest(v_results) x)));
END
$$;

-- One item of a bulk update: {"id": uuid, ...merge patch}.
CREATE FUNCTION crm.bulk_update_item(p_item jsonb, p_free text[], p_index integer) RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_prefix text := 'items[' || p_index || '].';
BEGIN
    IF jsonb_typeof(p_item) IS DISTINCT FROM 'object' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(crm.ferr('items[' || p_index || ']', 'must be an object')));
    END IF;
    IF jsonb_typeof(p_item -> 'id') IS DISTINCT FROM 'string' OR NOT crm.is_uuid(p_item ->> 'id') THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(crm.ferr(v_prefix || 'id', 'must be a UUID')));
    END IF;
    RETURN crm.contact_patch((p_item ->> 'id')::uuid, p_item - 'id', NULL, p_free, v_prefix);
END
$$;

---------------------------------------------------------------------------------------------------------------------
-- Brands. crmd normalises the domain (libpsl, lib/domain) and passes the verdict in p_aux: {"domain": "nike.com"}
-- or {"domain_error": "...", "domain_field": "domain"|"website"}; a domain of null in the body clears it.

CREATE FUNCTION crm.brand_errors(p jsonb, p_create boolean, p_aux jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
    e jsonb := '[]';
    k text;
    v jsonb;
    m text;
BEGIN
    IF jsonb_typeof(p) IS DISTINCT FROM 'object' THEN
        RETURN crm.ferr('body', 'must be an object');
    END IF;
    IF p_create AND NOT p ? 'name' THEN
        e := e || crm.ferr('name', 'is required');
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(p) ORDER BY 1 LOOP
        m := NULL;
        CASE k
            WHEN 'name' THEN
                m := crm.string_error(v, 200, false);
                IF m IS NULL AND btrim(v #>> '{}') = '' THEN
                    m := 'must not be empty';
                END IF;
            WHEN 'domain' THEN
                m := crm.string_error(v, 253, true);
            WHEN 'website' THEN
                m := crm.string_error(v, 2048, true);
                IF m IS NULL AND v #>> '{}' = '' THEN
                    m := 'must not be empty';
                END IF;
            WHEN 'source' THEN
                IF NOT p_create THEN
                    m := 'cannot be changed';
                ELSE
                    m := crm.string_error(v, 16, false);
                    IF m IS NULL AND v #>> '{}' NOT IN ('manual', 'import', 'gmail') THEN
                        m := 'must be one of: manual, import, gmail';
                    END IF;
                END IF;
            ELSE
                m := 'is not a known field';
        END CASE;
        IF m IS NOT NULL THEN
            e := e || crm.ferr(k, m);
        END IF;
    END LOOP;
    IF p_aux ? 'domain_error'
       AND NOT EXISTS (SELECT FROM jsonb_array_elements(e) x WHERE x ->> 'field' = p_aux ->> 'domain_field') THEN
        e := e || crm.ferr(p_aux ->> 'domain_field', p_aux ->> 'domain_error');
    END IF;
    RETURN e;
END
$$;

CREATE FUNCTION crm.duplicate_brand(p_existing uuid) RETURNS crm.op_result
    LANGUAGE sql IMMUTABLE
    AS $$
SELECT crm.op_problem(409, 'duplicate', 'Duplicate', 'A live brand of this tenant already has this domain.',
                      jsonb_build_object('existing_id', p_existing))
$$;

CREATE FUNCTION crm.brand_insert(p jsonb, p_aux jsonb) RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
DECLARE
    e jsonb := crm.brand_errors(p, true, p_aux);
    v_domain text := p_aux ->> 'domain';
    r crm.op_result;
BEGIN
    IF e <> '[]' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(e));
    END IF;
    FOR attempt IN 1..3 LOOP
        INSERT INTO crm.brands (tenant_id, name, domain, website, source, created_by)
        VALUES (crm.current_tenant(), btrim(p ->> 'name'), v_domain, p ->> 'website', coalesce(p ->> 'source', 'manual'),
                nullif(current_setting('crm.actor', true), '')::uuid)
        ON CONFLICT (tenant_id, domain) WHERE deleted_at IS NULL AND domain IS NOT NULL DO NOTHING
        RETURNING brand_id, version INTO r.id, r.version;
        IF r.id IS NOT NULL THEN
            PERFORM crm.audit('brand.created', 'brand', r.id, jsonb_build_object('domain', v_domain));
            r.status := 201;
            RETURN r;
        END IF;
        SELECT brand_id INTO r.id FROM crm.brands
        WHERE tenant_id = crm.current_tenant() AND domain = v_domain AND deleted_at IS NULL;
        IF FOUND THEN
            RETURN crm.duplicate_brand(r.id);
        END IF;
    END LOOP;
    RAISE EXCEPTION 'a brand insert kept conflicting' USING ERRCODE = 'serialization_failure';
END
$$;

CREATE FUNCTION crm.brand_patch(p_id uuid, p jsonb, p_aux jsonb, p_if_match text) RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
DECLARE
    e jsonb := crm.brand_errors(p, false, p_aux);
    o crm.brands;
    n crm.brands;
    v_changed text[];
    v_other uuid;
BEGIN
    IF e <> '[]' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(e));
    END IF;
    SELECT * INTO o FROM crm.brands
    WHERE tenant_id = crm.current_tenant() AND brand_id = p_id FOR UPDATE;
    IF NOT FOUND OR o.deleted_at IS NOT NULL THEN
        RETURN crm.not_found('brand');
    END IF;
    IF NOT crm.if_match(p_if_match, o.version) THEN
        RETURN crm.precondition_failed('brand', o.version);
    END IF;
    n := o;
    IF p ? 'name' THEN n.name := btrim(p ->> 'name'); END IF;
    IF p ? 'website' THEN n.website := p ->> 'website'; END IF;
    IF p_aux ? 'domain' THEN n.domain := p_aux ->> 'domain'; END IF;
    v_changed := ARRAY(SELECT f FROM (VALUES ('name', o.name IS DISTINCT FROM n.name),
                                             ('domain', o.domain IS DISTINCT FROM n.domain),
                                             ('website', o.website IS DISTINCT FROM n.website)) x (f, d) WHERE d);
    IF cardinality(v_changed) = 0 THEN
        RETURN ROW(200, o.brand_id, o.version, NULL::jsonb);
    END IF;
    IF n.domain IS DISTINCT FROM o.domain AND n.domain IS NOT NULL THEN
        SELECT brand_id INTO v_other FROM crm.brands
        WHERE tenant_id = o.tenant_id AND domain = n.domain AND deleted_at IS NULL AND brand_id <> o.brand_id;
        IF FOUND THEN
            RETURN crm.duplicate_brand(v_other);
        END IF;
    END IF;
    UPDATE crm.brands SET name = n.name, domain = n.domain, website = n.website, version = o.version + 1,
                          updated_at = now()
    WHERE tenant_id = o.tenant_id AND brand_id = o.brand_id;
    PERFORM crm.audit('brand.updated', 'brand', o.brand_id, jsonb_build_object('fields', to_jsonb(v_changed)));
    RETURN ROW(200, o.brand_id, o.version + 1, NULL::jsonb);
END
$$;

-- Deleting a brand keeps its contacts' links (a restore brings it back whole).
CREATE FUNCTION crm.brand_delete(p_id uuid, p_if_match text) RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
DECLARE
    o crm.brands;
BEGIN
    SELECT * INTO o FROM crm.brands
    WHERE tenant_id = crm.current_tenant() AND brand_id = p_id FOR UPDATE;
    IF NOT FOUND OR o.deleted_at IS NOT NULL THEN
        RETURN crm.not_found('brand');
    END IF;
    IF NOT crm.if_match(p_if_match, o.version) THEN
        RETURN crm.precondition_failed('brand', o.version);
    END IF;
    UPDATE crm.brands SET deleted_at = now(), updated_at = now(), version = o.version + 1
    WHERE tenant_id = o.tenant_id AND brand_id = o.brand_id;
    PERFORM crm.audit('brand.deleted', 'brand', o.brand_id);
    RETURN ROW(204, o.brand_id, o.version + 1, NULL::jsonb);
END
$$;

CREATE FUNCTION crm.brand_restore(p_id uuid, p_if_match text) RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
DECLARE
    o crm.brands;
    v_other uuid;
BEGIN
    SELECT * INTO o FROM crm.brands WHERE tenant_id = crm.current_tenant() AND brand_id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN crm.not_found('brand');
    END IF;
    IF NOT crm.if_match(p_if_match, o.version) THEN
        RETURN crm.precondition_failed('brand', o.version);
    END IF;
    IF o.deleted_at IS NULL THEN
        RETURN ROW(200, o.brand_id, o.version, NULL::jsonb);
    END IF;
    IF o.domain IS NOT NULL THEN
        SELECT brand_id INTO v_other FROM crm.brands
        WHERE tenant_id = o.tenant_id AND domain = o.domain AND deleted_at IS NULL;
        IF FOUND THEN
            RETURN crm.duplicate_brand(v_other);
        END IF;
    END IF;
    UPDATE crm.brands SET deleted_at = NULL, updated_at = now(), version = o.version + 1
    WHERE tenant_id = o.tenant_id AND brand_id = o.brand_id;
    PERFORM crm.audit('brand.restored', 'brand', o.brand_id);
    RETURN ROW(200, o.brand_id, o.version + 1, NULL::jsonb);
END
$$;

---------------------------------------------------------------------------------------------------------------------
-- Settings

CREATE FUNCTION crm.lead_scoring_json(w crm.lead_scoring) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    RETURN jsonb_build_object('work_email', w.work_email, 'has_phone', w.has_phone, 'has_title', w.has_title,
                              'recent_activity', w.recent_activity, 'recent_activity_days', w.recent_activity_days,
                              'stages', w.stages);
END
$$;

-- PUT /v1/settings/lead-scoring: the whole document. Contacts written from then on are scored with the new weights
-- (the BEFORE trigger); the tenant's existing contacts are rescored by a chain of contacts.rescore jobs enqueued
-- here (crm.contacts_rescore_batch). One statement for them all took 11.5 s at 133,000 contacts, longer than a
-- request may take, holding every contact's lock meanwhile.
CREATE FUNCTION crm.lead_scoring_put(p jsonb) RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
DECLARE
    e jsonb := '[]';
    k text;
    v jsonb;
    w crm.lead_scoring;
    v_pass text;
BEGIN
    IF jsonb_typeof(p) IS DISTINCT FROM 'object' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(crm.ferr('body', 'must be an object')));
    END IF;
    FOR k IN SELECT unnest(ARRAY['work_email', 'has_phone', 'has_title', 'recent_activity', 'recent_activity_days',
                                 'stages']) EXCEPT SELECT jsonb_object_keys(p) ORDER BY 1 LOOP
        e := e || crm.ferr(k, 'is required');
    END LOOP;
    FOR k, v IN SELECT * FROM jsonb_each(p) ORDER BY 1 LOOP
        IF k IN ('work_email', 'has_phone', 'has_title', 'recent_activity') THEN
            IF NOT crm.json_int_in(v, 0, 100) THEN
                e := e || crm.ferr(k, 'must be an integer from 0 to 100');
            END IF;
        ELSIF k = 'recent_activity_days' THEN
            IF NOT crm.json_int_in(v, 1, 365) THEN
                e := e || crm.ferr(k, 'must be an integer from 1 to 365');
            END IF;
        ELSIF k = 'stages' THEN
            IF jsonb_typeof(v) <> 'object' THEN
                e := e || crm.ferr(k, 'must be an object');
            ELSE
                e := e || coalesce((SELECT jsonb_agg(jsonb_build_object('field', 'stages.' || s, 'message', 'is required')
                                                     ORDER BY s)
                                    FROM unnest(crm.lifecycle_stages()) s WHERE NOT v ? s), '[]')
                       || coalesce((SELECT jsonb_agg(jsonb_build_object('field', 'stages.' || x.key, 'message',
                                                     CASE WHEN NOT x.key = ANY (crm.lifecycle_stages())
                                                          THEN 'is not a lifecycle stage'
                                                          ELSE 'must be an integer from 0 to 100' END) ORDER BY x.key)
                                    FROM jsonb_each(v) x
                                    WHERE NOT x.key = ANY (crm.lifecycle_stages()) OR NOT crm.json_int_in(x.value, 0, 100)),
                                   '[]');
            END IF;
        ELSE
            e := e || crm.ferr(k, 'is not a known field');
        END IF;
    END LOOP;
    IF e <> '[]' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(e));
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('crm.lead_scoring:' || crm.current_tenant(), 0));
    INSERT INTO crm.lead_scoring AS l (tenant_id, work_email, has_phone, has_title, recent_activity,
                                       recent_activity_days, stages)
    VALUES (crm.current_tenant(), (p ->> 'work_email')::integer, (p ->> 'has_phone')::integer,
            (p ->> 'has_title')::integer, (p ->> 'recent_activity')::integer, (p ->> 'recent_activity_days')::integer,
            p -> 'stages')
    ON CONFLICT (tenant_id) DO UPDATE
    SET work_email = EXCLUDED.work_email, has_phone = EXCLUDED.has_phone, has_title = EXCLUDED.has_title,
        recent_activity = EXCLUDED.recent_activity, recent_activity_days = EXCLUDED.recent_activity_days,
        stages = EXCLUDED.stages, updated_at = now()
    RETURNING * INTO w;
    v_pass := to_char(w.updated_at, 'YYYYMMDDHH24MISSUS');
    PERFORM crm.job_enqueue('contacts.rescore', jsonb_build_object('pass', v_pass), 0, 100, 'rescore:' || v_pass);
    PERFORM crm.audit('settings.lead_scoring_changed', 'tenant', w.tenant_id, crm.lead_scoring_json(w));
    RETURN ROW(200, NULL::uuid, NULL::integer, crm.lead_scoring_json(w));
END
$$;

-- One job of a rescoring pass (payload {pass, after}): the next 2,000 contacts of the tenant in id order after
-- `after`, each whose score the current weights change written again (the trigger scores it; a new score is a new
-- representation, so a new version and updated_at, which clients syncing with updated_since see), and the job for
-- the following 2,000 enqueued in the same transaction. At least once: a batch run twice finds nothing to change.
-- Returns the number of contacts rescored.
CREATE FUNCTION crm.contacts_rescore_batch(p_payload jsonb) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    w crm.lead_scoring := crm.lead_weights(crm.current_tenant());
    v_after uuid := coalesce((p_payload ->> 'after')::uuid, '00000000-0000-0000-0000-000000000000');
    v_last uuid;
    n integer;
BEGIN
    SELECT x.contact_id INTO v_last
    FROM (SELECT c.contact_id FROM crm.contacts c WHERE c.tenant_id = crm.current_tenant() AND c.contact_id > v_after
          ORDER BY c.contact_id LIMIT 2000) x
    ORDER BY x.contact_id DESC LIMIT 1;
    IF v_last IS NULL THEN
        RETURN 0;
    END IF;
    UPDATE crm.contacts c SET version = c.version + 1, updated_at = now()
    WHERE c.tenant_id = crm.current_tenant() AND c.contact_id > v_after AND c.contact_id <= v_last
      AND c.lead_score <> crm.lead_score(w, c.email_free, c.phone, c.title, c.last_activity_at, c.lifecycle_stage);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM crm.job_enqueue('contacts.rescore', jsonb_build_object('pass', p_payload ->> 'pass', 'after', v_last), 0,
                            100, 'rescore:' || coalesce(p_payload ->> 'pass', '') || ':' || v_last);
    RETURN n;
END
$$;

CREATE FUNCTION crm.custom_field_json(d crm.custom_field_defs) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    AS $$
SELECT jsonb_build_object('name', d.name, 'type', d.type, 'max_length', d.max_length, 'required', d.required,
                          'label', d.label)
$$;

CREATE FUNCTION crm.custom_field_put(p_name text, p jsonb) RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
DECLARE
    e jsonb := '[]';
    k text;
    v jsonb;
    d crm.custom_field_defs;
BEGIN
    IF p_name !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        e := e || crm.ferr('name', 'must match ^[a-z][a-z0-9_]{0,62}$');
    END IF;
    IF jsonb_typeof(p) IS DISTINCT FROM 'object' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(e || crm.ferr('body', 'must be an object')));
    END IF;
    IF NOT p ? 'type' THEN
        e := e || crm.ferr('type', 'is required');
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(p) ORDER BY 1 LOOP
        CASE k
            WHEN 'type' THEN
                IF jsonb_typeof(v) <> 'string' OR v #>> '{}' NOT IN ('text', 'number', 'boolean', 'date') THEN
                    e := e || crm.ferr(k, 'must be one of: text, number, boolean, date');
                END IF;
            WHEN 'max_length' THEN
                IF jsonb_typeof(v) <> 'null' AND NOT crm.json_int_in(v, 1, 10000) THEN
                    e := e || crm.ferr(k, 'must be an integer from 1 to 10000');
                ELSIF jsonb_typeof(v) <> 'null' AND p ->> 'type' IS DISTINCT FROM 'text' THEN
                    e := e || crm.ferr(k, 'applies to text fields only');
                END IF;
            WHEN 'required' THEN
                IF jsonb_typeof(v) <> 'boolean' THEN
                    e := e || crm.ferr(k, 'must be a boolean');
                END IF;
            WHEN 'label' THEN
                IF crm.string_error(v, 100, true) IS NOT NULL THEN
                    e := e || crm.ferr(k, crm.string_error(v, 100, true));
                END IF;
            ELSE
                e := e || crm.ferr(k, 'is not a known field');
        END CASE;
    END LOOP;
    IF e <> '[]' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(e));
    END IF;
    INSERT INTO crm.custom_field_defs AS c (tenant_id, name, type, max_length, required, label)
    VALUES (crm.current_tenant(), p_name, p ->> 'type',
            CASE WHEN p ->> 'type' = 'text' THEN coalesce((p ->> 'max_length')::integer, 255) END,
            coalesce((p ->> 'required')::boolean, false), p ->> 'label')
    ON CONFLICT (tenant_id, name) DO UPDATE
    SET type = EXCLUDED.type, max_length = EXCLUDED.max_length, required = EXCLUDED.required, label = EXCLUDED.label,
        updated_at = now()
    RETURNING * INTO d;
    PERFORM crm.audit('settings.custom_field_saved', 'custom_field', NULL, crm.custom_field_json(d));
    RETURN ROW(200, NULL::uuid, NULL::integer, crm.custom_field_json(d));
END
$$;

CREATE FUNCTION crm.custom_field_delete(p_name text) RETURNS crm.op_result
    LANGUAGE plpgsql
    AS $$
BEGIN
    DELETE FROM crm.custom_field_defs WHERE tenant_id = crm.current_tenant() AND name = p_name;
    IF NOT FOUND THEN
        RETURN crm.op_problem(404, 'not-found', 'Not found', 'This tenant has no custom field of this name.');
    END IF;
    PERFORM crm.audit('settings.custom_field_deleted', 'custom_field', NULL, jsonb_build_object('name', p_name));
    RETURN ROW(204, NULL::uuid, NULL::integer, NULL::jsonb);
END
$$;

---------------------------------------------------------------------------------------------------------------------
-- Lists: keyset pagination (no OFFSET) on (sort key, id), stable under concurrent inserts; the cursor names its sort.
-- p holds the query parameters as strings.

-- limit (1..200, default 50), or NULL after adding an error to e.
CREATE FUNCTION crm.list_limit(p jsonb, INOUT e jsonb, OUT n integer)
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    n := 50;
    IF p ? 'limit' THEN
        IF p ->> 'limit' ~ '^\d{1,3}$' AND (p ->> 'limit')::integer BETWEEN 1 AND 200 THEN
            n := (p ->> 'limit')::integer;
        ELSE
            e := e || crm.ferr('limit', 'must be an integer from 1 to 200');
        END IF;
    END IF;
END
$$;

-- The ids of the session tenant's contacts (deleted ones too) that match a search: every word of q as a prefix
-- (p_tsq), or q as a substring (p_like), either may be NULL. Called by crm.contacts_list only, as the owner.
CREATE FUNCTION crm.contact_matches(p_tsq tsquery, p_like text, p_max integer) RETURNS SETOF uuid
    LANGUAGE plpgsql STABLE
    AS $$
BEGIN
    -- Planned for each call (EXECUTE): how many rows a pattern matches decides the plan, and a generic plan cannot
    -- see the pattern.
    IF p_tsq IS NULL AND p_like IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE
        'SELECT c.contact_id FROM crm.contacts c WHERE c.tenant_id = $1 AND ('
        || concat_ws(' OR ', CASE WHEN p_tsq IS NOT NULL THEN 'c.search_doc @@ $2' END,
                     CASE WHEN p_like IS NOT NULL THEN 'c.search_text LIKE $3' END)
        || ') LIMIT $4'
        USING crm.current_tenant(), p_tsq, p_like, p_max;
END
$$;

-- SECURITY DEFINER on purpose: under crmd_app's row-level security policy the planner may not use non-leakproof
-- operators (@@, LIKE) as index conditions, so both GIN indexes went unused and every search scanned the table. The
-- owner's policy is USING (true), and every query here (and in crm.contact_matches) names the session's tenant
-- itself, as the policy would.
CREATE FUNCTION crm.contacts_list(p jsonb, p_brand uuid) RETURNS crm.op_result
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    e jsonb := '[]';
    v_limit integer;
    v_sort text := coalesce(p ->> 'sort', '-updated_at');
    v_key text := ltrim(v_sort, '-');
    v_desc boolean := left(v_sort, 1) = '-';
    v_col text;
    v_cast text;
    v_cursor jsonb;
    v_q text := nullif(btrim(p ->> 'q'), '');
    v_tsq tsquery;
    v_like text;
    v_tag uuid;
    v_since timestamptz;
    v_ids uuid[];
    v_mode text;
    v_filter text;
    v_search text;
    v_order text;
    v_deleted boolean := false;
    v_sql text;
    v_rows json[];
    v_last_key text;
    v_last_id uuid;
    v_count integer := 0;
    rec record;
BEGIN
    SELECT * INTO e, v_limit FROM crm.list_limit(p, e);
    v_col := CASE v_key WHEN 'updated_at' THEN 'c.updated_at' WHEN 'created_at' THEN 'c.created_at'
                        WHEN 'name' THEN 'c.sort_name' WHEN 'lead_score' THEN 'c.lead_score' END;
    v_cast := CASE v_key WHEN 'name' THEN 'text' WHEN 'lead_score' THEN 'integer' ELSE 'timestamptz' END;
    IF v_col IS NULL OR v_sort ~ '^--' THEN
        e := e || crm.ferr('sort', 'must be one of: updated_at, created_at, name, lead_score (prefix - for descending)');
    END IF;
    IF p ? 'cursor' THEN
        v_cursor := crm.cursor_decode(p ->> 'cursor');
        IF v_cursor IS NULL OR v_cursor ->> 0 <> v_sort OR NOT crm.cursor_key_ok(v_cursor ->> 1, v_cast) THEN
            e := e || crm.ferr('cursor', 'is not a cursor of this list and sort');
        END IF;
    END IF;
    IF char_length(v_q) > 200 THEN
        e := e || crm.ferr('q', 'is longer than 200 characters');
    ELSIF (SELECT count(*) FROM regexp_split_to_table(lower(v_q), '[^[:alnum:]]+') w WHERE w <> '') > 10 THEN
        e := e || crm.ferr('q', 'has more than 10 words');
    END IF;
    IF p ? 'tag' AND crm.tag_name(p ->> 'tag') IS NULL THEN
        e := e || crm.ferr('tag', 'is not a tag name');
    END IF;
    IF p ? 'brand_id' AND NOT crm.is_uuid(p ->> 'brand_id') THEN
        e := e || crm.ferr('brand_id', 'must be a UUID');
    END IF;
    IF p ? 'owner_id' AND NOT crm.is_uuid(p ->> 'owner_id') THEN
        e := e || crm.ferr('owner_id', 'must be a UUID');
    END IF;
    IF p ? 'stage' AND NOT (p ->> 'stage') = ANY (crm.lifecycle_stages()) THEN
        e := e || crm.ferr('stage', 'must be one of: ' || array_to_string(crm.lifecycle_stages(), ', '));
    END IF;
    IF p ? 'updated_since' THEN
        v_since := crm.rfc3339(p ->> 'updated_since');
        IF v_since IS NULL THEN
            e := e || crm.ferr('updated_since', 'must be an RFC 3339 date-time');
        END IF;
    END IF;
    IF p ? 'include_deleted' THEN
        IF p ->> 'include_deleted' NOT IN ('true', 'false') THEN
            e := e || crm.ferr('include_deleted', 'must be true or false');
        END IF;
        v_deleted := p ->> 'include_deleted' = 'true';
    END IF;
    IF e <> '[]' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(e));
    END IF;

    IF p ? 'tag' THEN
        SELECT tag_id INTO v_tag FROM crm.tags WHERE tenant_id = crm.current_tenant() AND name = crm.tag_name(p ->> 'tag');
        IF NOT FOUND THEN
            RETURN ROW(200, NULL::uuid, NULL::integer, jsonb_build_object('data', '[]'::jsonb, 'next_cursor', NULL));
        END IF;
    END IF;
    IF v_q IS NOT NULL THEN
        -- Every word of q as a prefix (words split as the search document splits them), or q as a substring.
        v_tsq := to_tsquery('simple', (SELECT string_agg(quote_literal(w) || ':*', ' & ')
                                       FROM regexp_split_to_table(lower(v_q), '[^[:alnum:]]+') w WHERE w <> ''));
        -- Trigrams need three characters; a shorter q is matched as word prefixes only (the index serves both).
        IF char_length(v_q) >= 3 OR v_tsq IS NULL THEN
            v_like := '%' || replace(replace(replace(lower(v_q), '\', '\\'), '%', '\%'), '_', '\_') || '%';
        END IF;
    END IF;
    -- How a search is answered (bench/contacts, 100,000 contacts):
    --   'ids'     few matches (at most 2,000, counted through the search indexes): each looked up by primary key and
    --             sorted here (nomatchzz 0.4 ms, a 1 % term 7 ms);
    --   'bounded' many matches: the sort key's index walked over at most 5,000 rows, testing each, which fills a page
    --             at once when matches are spread (a 12 % term: 5 ms);
    --   'search'  when that window held less than a page (the matches lie further along the sort order): every
    --             match read through the search indexes (a bitmap scan) and the page sorted from them (a 12 % term
    --             behind 25,000 newer non-matching contacts: 26 ms, where the unbounded walk took 90).
    v_mode := CASE WHEN v_q IS NULL THEN 'walk' END;
    IF v_q IS NOT NULL THEN
        v_ids := ARRAY(SELECT crm.contact_matches(v_tsq, v_like, 2001));
        v_mode := CASE WHEN cardinality(v_ids) <= 2000 THEN 'ids' ELSE 'bounded' END;
    END IF;
    v_filter := CASE WHEN v_deleted THEN '' ELSE ' AND c.deleted_at IS NULL' END
          || CASE WHEN v_tag IS NULL THEN '' ELSE ' AND EXISTS (SELECT FROM crm.contact_tags ct WHERE'
                  ' ct.tenant_id = c.tenant_id AND ct.contact_id = c.contact_id AND ct.tag_id = $3)' END
          || CASE WHEN p_brand IS NULL AND NOT p ? 'brand_id' THEN '' ELSE ' AND c.brand_id = $4' END
          || CASE WHEN p ? 'owner_id' THEN ' AND c.owner_id = $5' ELSE '' END
          || CASE WHEN p ? 'stage' THEN ' AND c.lifecycle_stage = $6' ELSE '' END
          || CASE WHEN v_since IS NULL THEN '' ELSE ' AND c.updated_at >= $7' END
          || CASE WHEN v_cursor IS NULL THEN ''
                  ELSE format(' AND (%s, c.contact_id) %s ($8::%s, $9::uuid)', v_col,
                              CASE WHEN v_desc THEN '<' ELSE '>' END, v_cast) END;
    v_search := CASE WHEN v_q IS NULL THEN ''
                     WHEN v_tsq IS NULL THEN ' AND c.search_text LIKE $2'
                     WHEN v_like IS NULL THEN ' AND c.search_doc @@ $1'
                     ELSE ' AND (c.search_doc @@ $1 OR c.search_text LIKE $2)' END;
    v_order := format(' ORDER BY %1$s %2$s, c.contact_id %2$s', v_col, CASE WHEN v_desc THEN 'DESC' ELSE 'ASC' END);
    LOOP
        v_sql := format('SELECT crm.contact_json(c) AS j, %s::text AS k, c.contact_id AS id FROM ', v_col)
              || CASE v_mode
                     -- each id looked up by primary key (OFFSET 0 keeps the planner from turning this into a
                     -- merge join that reads the tenant's whole primary key range)
                     WHEN 'ids' THEN 'unnest($11) m (id) CROSS JOIN LATERAL (SELECT * FROM crm.contacts x'
                                     ' WHERE x.tenant_id = crm.current_tenant() AND x.contact_id = m.id OFFSET 0) c'
                                     ' WHERE c.tenant_id = crm.current_tenant()' || v_filter
                     WHEN 'bounded' THEN '(SELECT * FROM crm.contacts c WHERE c.tenant_id = crm.current_tenant()'
                                         || v_filter || v_order || ' LIMIT 5000) c WHERE true' || v_search
                     -- OFFSET 0: planned apart from the ORDER BY, so the search indexes find the rows
                     WHEN 'search' THEN '(SELECT * FROM crm.contacts c WHERE c.tenant_id = crm.current_tenant()'
                                        || v_filter || v_search || ' OFFSET 0) c WHERE true' 
                     ELSE 'crm.contacts c WHERE c.tenant_id = crm.current_tenant()' || v_filter || v_search
                 END
              || v_order || ' LIMIT $10';
        v_rows := NULL;
        v_count := 0;
        FOR rec IN EXECUTE v_sql USING v_tsq, v_like, v_tag, coalesce(p_brand, (p ->> 'brand_id')::uuid),
                                       (p ->> 'owner_id')::uuid, p ->> 'stage', v_since, v_cursor ->> 1,
                                       v_cursor ->> 2, v_limit + 1, v_ids LOOP
            v_count := v_count + 1;
            EXIT WHEN v_count > v_limit;
            v_rows := v_rows || rec.j;
            v_last_key := rec.k;
            v_last_id := rec.id;
        END LOOP;
        EXIT WHEN v_mode <> 'bounded' OR v_count > v_limit;
        v_mode := 'search';
    END LOOP;
    RETURN ROW(200, NULL::uuid, NULL::integer, jsonb_build_object(
        'data', coalesce(to_jsonb(v_rows), '[]'),
        'next_cursor', CASE WHEN v_count > v_limit THEN crm.cursor_encode(jsonb_build_array(v_sort, v_last_key, v_last_id)) END));
END
$$;

CREATE FUNCTION crm.brands_list(p jsonb) RETURNS crm.op_result
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
    e jsonb := '[]';
    v_limit integer;
    v_sort text := coalesce(p ->> 'sort', 'name');
    v_key text := ltrim(v_sort, '-');
    v_desc boolean := left(v_sort, 1) = '-';
    v_col text;
    v_cast text;
    v_cursor jsonb;
    v_q text := nullif(btrim(p ->> 'q'), '');
    v_deleted boolean := p ->> 'include_deleted' = 'true';
    v_rows json[];
    v_last_key text;
    v_last_id uuid;
    v_count integer := 0;
    rec record;
BEGIN
    SELECT * INTO e, v_limit FROM crm.list_limit(p, e);
    v_col := CASE v_key WHEN 'updated_at' THEN 'b.updated_at' WHEN 'created_at' THEN 'b.created_at'
                        WHEN 'name' THEN 'b.sort_name' END;
    v_cast := CASE v_key WHEN 'name' THEN 'text' ELSE 'timestamptz' END;
    IF v_col IS NULL OR v_sort ~ '^--' THEN
        e := e || crm.ferr('sort', 'must be one of: name, created_at, updated_at (prefix - for descending)');
    END IF;
    IF p ? 'cursor' THEN
        v_cursor := crm.cursor_decode(p ->> 'cursor');
        IF v_cursor IS NULL OR v_cursor ->> 0 <> v_sort OR NOT crm.cursor_key_ok(v_cursor ->> 1, v_cast) THEN
            e := e || crm.ferr('cursor', 'is not a cursor of this list and sort');
        END IF;
    END IF;
    IF char_length(v_q) > 200 THEN
        e := e || crm.ferr('q', 'is longer than 200 characters');
    END IF;
    IF p ? 'include_deleted' AND p ->> 'include_deleted' NOT IN ('true', 'false') THEN
        e := e || crm.ferr('include_deleted', 'must be true or false');
    END IF;
    IF e <> '[]' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(e));
    END IF;
    FOR rec IN EXECUTE format('SELECT crm.brand_json(b) AS j, %s::text AS k, b.brand_id AS id FROM crm.brands b'
                              ' WHERE b.tenant_id = crm.current_tenant()', v_col)
                       || CASE WHEN v_deleted THEN '' ELSE ' AND b.deleted_at IS NULL' END
                       || CASE WHEN v_q IS NULL THEN ''
                               ELSE ' AND (b.sort_name LIKE $1 OR b.domain LIKE $1)' END
                       || CASE WHEN v_cursor IS NULL THEN ''
                               ELSE format(' AND (%s, b.brand_id) %s ($2::%s, $3::uuid)', v_col,
                                           CASE WHEN v_desc THEN '<' ELSE '>' END, v_cast) END
                       || format(' ORDER BY %1$s %2$s, b.brand_id %2$s LIMIT $4', v_col,
                                 CASE WHEN v_desc THEN 'DESC' ELSE 'ASC' END)
                USING '%' || replace(replace(replace(lower(v_q), '\', '\\'), '%', '\%'), '_', '\_') || '%',
                      v_cursor ->> 1, v_cursor ->> 2, v_limit + 1 LOOP
        v_count := v_count + 1;
        EXIT WHEN v_count > v_limit;
        v_rows := v_rows || rec.j;
        v_last_key := rec.k;
        v_last_id := rec.id;
    END LOOP;
    RETURN ROW(200, NULL::uuid, NULL::integer, jsonb_build_object(
        'data', coalesce(to_jsonb(v_rows), '[]'),
        'next_cursor', CASE WHEN v_count > v_limit THEN crm.cursor_encode(jsonb_build_array(v_sort, v_last_key, v_last_id)) END));
END
$$;

CREATE FUNCTION crm.tags_list(p jsonb) RETURNS crm.op_result
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
    e jsonb := '[]';
    v_limit integer;
    v_cursor jsonb;
    v_rows jsonb;
    v_n integer;
BEGIN
    SELECT * INTO e, v_limit FROM crm.list_limit(p, e);
    IF p ? 'cursor' THEN
        v_cursor := crm.cursor_decode(p ->> 'cursor');
        IF v_cursor IS NULL OR v_cursor ->> 0 <> 'name' THEN
            e := e || crm.ferr('cursor', 'is not a cursor of this list');
        END IF;
    END IF;
    IF e <> '[]' THEN
        RETURN ROW(400, NULL::uuid, NULL::integer, crm.invalid(e));
    END IF;
    SELECT jsonb_agg(jsonb_build_object('name', x.name, 'contacts', x.n, 'id', x.tag_id) ORDER BY x.name), count(*)
    INTO v_rows, v_n
    FROM (SELECT t.name, t.tag_id,
                 (SELECT count(*) FROM crm.contact_tags ct JOIN crm.contacts c
                      ON c.tenant_id = ct.tenant_id AND c.contact_id = ct.contact_id AND c.deleted_at IS NULL
                  WHERE ct.tenant_id = t.tenant_id AND ct.tag_id = t.tag_id) AS n
          FROM crm.tags t
          WHERE t.tenant_id = crm.current_tenant() AND (v_cursor IS NULL OR t.name > v_cursor ->> 1)
          ORDER BY t.name LIMIT v_limit + 1) x;
    IF v_n > v_limit THEN
        v_rows := v_rows - v_limit;
    END IF;
    RETURN ROW(200, NULL::uuid, NULL::integer, jsonb_build_object(
        'data', coalesce((SELECT jsonb_agg(r - 'id') FROM jsonb_array_elements(v_rows) r), '[]'),
        'next_cursor', CASE WHEN v_n > v_limit THEN
            crm.cursor_encode(jsonb_build_array('name', v_rows -> (v_limit - 1) ->> 'name', v_rows -> (v_limit - 1) ->> 'id')) END));
END
$$;

---------------------------------------------------------------------------------------------------------------------
-- Entry points

-- Every change crmd makes to contacts, brands, tags and settings: one transaction that runs the operation, writes
-- its audit rows and, with an Idempotency-Key, stores the answer (Stripe's semantics, DESIGN.md §5):
--   * a key in use by a request still running → 409 idempotency-in-progress (a transaction-scoped advisory lock);
--   * a key used within 24 hours with the same fingerprint (user, method, path, body) → the stored answer, replayed;
--     with another fingerprint → 422 idempotency-mismatch;
--   * answers are stored unless they are 400 (the request never ran) or a conflict with a concurrent change.
-- p_op names the operation; p_id is the path's record id (not yet checked to be a UUID: anything else is 404);
-- p_arg the tag or custom field name; p_aux what crmd computed ({"free": [free-mail domains in the body],
-- "if_match": header, "domain"/"domain_error"/"domain_field"}).
CREATE FUNCTION crm.api_write(p_actor uuid, p_op text, p_id text, p_arg text, p_body text, p_aux jsonb,
                              p_idem_key text, p_fingerprint text, p_ip inet, p_ua text, p_rid text)
    RETURNS TABLE (status integer, etag text, location text, replayed boolean, body text)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v_tenant uuid := crm.current_tenant();
    k crm.idempotency_keys;
    r crm.op_result;
    v_body jsonb := p_body::jsonb;
    v_id uuid;
    v_free text[] := ARRAY(SELECT jsonb_array_elements_text(coalesce(p_aux -> 'free', '[]')));
    v_if_match text := p_aux ->> 'if_match';
    v_store boolean := true;
    v_kind text := split_part(p_op, '.', 1);
BEGIN
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'api_write without a tenant' USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM set_config('crm.actor', coalesce(p_actor::text, ''), true), set_config('crm.ip', coalesce(host(p_ip), ''), true),
            set_config('crm.ua', coalesce(left(p_ua, 512), ''), true), set_config('crm.rid', coalesce(left(p_rid, 128), ''), true);
    IF p_idem_key IS NOT NULL THEN
        IF NOT pg_try_advisory_xact_lock(hashtextextended('crm.idempotency:' || v_tenant || ':' || p_idem_key, 0)) THEN
            RETURN QUERY SELECT 409, NULL::text, NULL::text, false, crm.problem(409, 'idempotency-in-progress',
                'Request in progress', 'A request with this Idempotency-Key is still being processed; retry later.')::text;
            RETURN;
        END IF;
        SELECT * INTO k FROM crm.idempotency_keys i
        WHERE i.tenant_id = v_tenant AND i.key = p_idem_key AND i.created_at > now() - interval '24 hours';
        IF FOUND THEN
            IF k.fingerprint <> p_fingerprint THEN
                RETURN QUERY SELECT 422, NULL::text, NULL::text, false, crm.problem(422, 'idempotency-mismatch',
                    'Idempotency-Key reused', 'This Idempotency-Key was used with a different request (user, method, '
                    'path or body) within the last 24 hours.')::text;
            ELSE
                RETURN QUERY SELECT k.status, k.etag, k.location, true, k.body;
            END IF;
            RETURN;
        END IF;
    END IF;

    IF p_id IS NOT NULL AND NOT crm.is_uuid(p_id) THEN
        r := crm.not_found(CASE v_kind WHEN 'brand' THEN 'brand' ELSE 'contact' END);
    ELSE
        v_id := p_id::uuid;
        BEGIN
            r := CASE p_op
                     WHEN 'contact.create' THEN crm.contact_insert(v_body, v_free, false, '')
                     WHEN 'contact.upsert' THEN crm.contact_insert(v_body, v_free, true, '')
                     WHEN 'contact.update' THEN crm.contact_patch(v_id, v_body, v_if_match, v_free, '')
                     WHEN 'contact.delete' THEN crm.contact_delete(v_id, v_if_match)
                     WHEN 'contact.restore' THEN crm.contact_restore(v_id, v_if_match)
                     WHEN 'contact.tag' THEN crm.contact_tag(v_id, p_arg, true, 'name', v_if_match)
                     WHEN 'contact.untag' THEN crm.contact_tag(v_id, p_arg, false, 'name', v_if_match)
                     WHEN 'contact.bulk' THEN crm.contacts_bulk(v_body, v_free)
                     WHEN 'brand.create' THEN crm.brand_insert(v_body, p_aux)
                     WHEN 'brand.update' THEN crm.brand_patch(v_id, v_body, p_aux, v_if_match)
                     WHEN 'brand.delete' THEN crm.brand_delete(v_id, v_if_match)
                     WHEN 'brand.restore' THEN crm.brand_restore(v_id, v_if_match)
                     WHEN 'settings.lead_scoring' THEN crm.lead_scoring_put(v_body)
                     WHEN 'settings.custom_field_put' THEN crm.custom_field_put(p_arg, v_body)
                     WHEN 'settings.custom_field_delete' THEN crm.custom_field_delete(p_arg)
                 END;
            IF r IS NULL THEN
                RAISE EXCEPTION 'api_write: unknown operation %', p_op;
            END IF;
        EXCEPTION WHEN unique_violation OR deadlock_detected OR serialization_failure OR lock_not_available THEN
            -- A concurrent transaction took the address or domain between this one's look-up and its write, or the
            -- two waited for each other; everything this request did is undone. Not stored: a retry may succeed.
            r := crm.op_problem(409, 'conflict', 'Conflict',
                                'A concurrent change conflicts with this one; nothing was changed. Retry the request.');
            v_store := false;
        END;
    END IF;

    status := r.status;
    IF r.status < 400 AND r.id IS NOT NULL AND r.status <> 204 THEN
        etag := '"' || r.version || '"';
        IF v_kind = 'brand' THEN
            SELECT crm.brand_json(b)::text INTO body FROM crm.brands b WHERE b.tenant_id = v_tenant AND b.brand_id = r.id;
        ELSIF p_op = 'contact.upsert' THEN
            SELECT (jsonb_build_object('created', r.status = 201) || crm.contact_json(c)::jsonb)::text INTO body
            FROM crm.contacts c WHERE c.tenant_id = v_tenant AND c.contact_id = r.id;
        ELSE
            SELECT crm.contact_json(c)::text INTO body FROM crm.contacts c WHERE c.tenant_id = v_tenant AND c.contact_id = r.id;
        END IF;
        IF r.status = 201 THEN
            location := '/v1/' || CASE v_kind WHEN 'brand' THEN 'brands' ELSE 'contacts' END || '/' || r.id;
        END IF;
    ELSIF r.status = 204 THEN
        body := NULL;
    ELSE
        body := r.body::text;
    END IF;
    replayed := false;

    IF p_idem_key IS NOT NULL AND v_store AND r.status <> 400 THEN
        INSERT INTO crm.idempotency_keys AS i (tenant_id, key, fingerprint, status, etag, location, body)
        VALUES (v_tenant, p_idem_key, p_fingerprint, status, etag, location, body)
        ON CONFLICT (tenant_id, key) DO UPDATE  -- an expired key used again
        SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status, etag = EXCLUDED.etag,
            location = EXCLUDED.location, body = EXCLUDED.body, created_at = now();
        -- Keeps the table bounded: each keyed write removes up to 16 of the tenant's expired keys.
        DELETE FROM crm.idempotency_keys i
        WHERE i.ctid = ANY (ARRAY(SELECT x.ctid FROM crm.idempotency_keys x
                                  WHERE x.tenant_id = v_tenant AND x.created_at < now() - interval '24 hours' LIMIT 16));
    END IF;
    RETURN NEXT;
END
$$;

-- Every read but a contact by id (app/contacts prepares that one itself): lists, a brand, settings.
CREATE FUNCTION crm.api_read(p_op text, p_id text, p_params jsonb)
    RETURNS TABLE (status integer, etag text, body text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    r crm.op_result;
    b crm.brands;
BEGIN
    IF p_id IS NOT NULL AND NOT crm.is_uuid(p_id) THEN
        r := crm.not_found(CASE WHEN p_op LIKE 'brand%' THEN 'brand' ELSE 'contact' END);
    ELSIF p_op IN ('brand.get', 'brand.contacts') THEN
        SELECT * INTO b FROM crm.brands x WHERE x.tenant_id = crm.current_tenant() AND x.brand_id = p_id::uuid
          AND (x.deleted_at IS NULL OR (p_op = 'brand.get' AND p_params ->> 'include_deleted' = 'true'));
        IF NOT FOUND THEN
            r := crm.not_found('brand');
        ELSIF p_op = 'brand.get' THEN
            RETURN QUERY SELECT 200, '"' || b.version || '"', crm.brand_json(b)::text;
            RETURN;
        ELSE
            r := crm.contacts_list(jsonb_strip_nulls(jsonb_build_object('limit', p_params -> 'limit',
                                                                        'cursor', p_params -> 'cursor')), b.brand_id);
        END IF;
    ELSE
        r := CASE p_op
                 WHEN 'contact.list' THEN crm.contacts_list(p_params, NULL)
                 WHEN 'brand.list' THEN crm.brands_list(p_params)
                 WHEN 'tag.list' THEN crm.tags_list(p_params)
                 WHEN 'settings.lead_scoring' THEN ROW(200, NULL::uuid, NULL::integer, crm.lead_scoring_json(crm.lead_weights(crm.current_tenant())))::crm.op_result
                 WHEN 'settings.custom_fields' THEN ROW(200, NULL::uuid, NULL::integer, jsonb_build_object('data', coalesce(
                     (SELECT jsonb_agg(crm.custom_field_json(d) ORDER BY d.name) FROM crm.custom_field_defs d
                      WHERE d.tenant_id = crm.current_tenant()), '[]')))::crm.op_result
             END;
        IF r IS NULL THEN
            RAISE EXCEPTION 'api_read: unknown operation %', p_op;
        END IF;
    END IF;
    RETURN QUERY SELECT r.status, NULL::text, r.body::text;
END
$$;

-- The contact read by id (GET /v1/contacts/{id}): its representation with brand and tags, and its version.
CREATE FUNCTION crm.contact_get(p_id uuid, p_include_deleted boolean) RETURNS TABLE (version integer, body text)
    LANGUAGE plpgsql STABLE
    AS $$
BEGIN
    RETURN QUERY
    SELECT c.version, crm.contact_json(c)::text FROM crm.contacts c
    WHERE c.tenant_id = crm.current_tenant() AND c.contact_id = p_id AND (p_include_deleted OR c.deleted_at IS NULL);
END
$$;

-- crmd_app runs these functions as itself (they are not SECURITY DEFINER), so it needs each one, helpers included.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'crm' AND p.proname = ANY (ARRAY[
    'api_read', 'api_write', 'audit', 'brand_delete', 'brand_errors', 'brand_insert',
    'brand_json', 'brand_patch', 'brand_restore', 'brands_list', 'brands_renamed', 'bulk_update_item',
    'contact_delete', 'contact_errors', 'contact_get', 'contact_insert', 'contact_json', 'contact_patch',
    'contact_restore', 'contact_tag', 'contact_tags_changed', 'contact_with_email', 'contact_write', 'contacts_bulk', 'contacts_derive', 'contacts_rescore_batch',
    'contacts_list', 'cursor_decode', 'cursor_key_ok', 'cursor_encode', 'custom_field_delete', 'custom_field_errors', 'custom_field_json',
    'custom_field_put', 'duplicate_brand', 'duplicate_contact', 'email_valid', 'ferr', 'if_match',
    'invalid', 'is_date', 'is_uuid', 'json_int_in', 'lead_score', 'lead_scoring_json',
    'lead_scoring_put', 'lead_weights', 'lifecycle_stages', 'list_limit', 'not_found', 'op_problem', 'precondition_failed',
    'problem', 'rfc3339', 'string_error', 'tag_name', 'tags_attach', 'tags_list',
    'ts'
             ]) LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO crmd_app', f);
    END LOOP;
END
$$;
