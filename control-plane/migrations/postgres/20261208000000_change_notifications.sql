-- Change notifications between control-plane replicas sharing this database (issue #15):
-- every committed configuration change and every change to the fleet's stored health is
-- announced with NOTIFY, which PostgreSQL delivers to the listening replicas at COMMIT (never
-- for a transaction that rolls back). Each replica LISTENs and reloads at once instead of
-- waiting for its poll (kept as the fallback for notifications lost while a listener
-- reconnects). Payloads carry no data but the new version: a listener reads everything else
-- from the tables, as a poll would.

-- The version row is bumped first in every configuration write (store/mod.rs), so one row
-- trigger announces each commit with its version.
CREATE FUNCTION modelgw_notify_config() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('modelgw_config', NEW.version::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER config_version_notify
    AFTER UPDATE ON config_version
    FOR EACH ROW EXECUTE FUNCTION modelgw_notify_config();

-- Health reports and operator resets: one notification per statement (PostgreSQL folds
-- identical notifications of one transaction into one).
CREATE FUNCTION modelgw_notify_health() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('modelgw_health', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER endpoint_health_notify
    AFTER INSERT OR UPDATE ON endpoint_health
    FOR EACH STATEMENT EXECUTE FUNCTION modelgw_notify_health();

CREATE TRIGGER endpoint_health_resets_notify
    AFTER INSERT OR UPDATE ON endpoint_health_resets
    FOR EACH STATEMENT EXECUTE FUNCTION modelgw_notify_health();
