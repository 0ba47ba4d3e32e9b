-- Tamper-evident audit (safety/audit_chain.py, docs/audit.md): every RBAC audit row, approval
-- (the gate's decisions) and execution event carries `seq`, `prev_hash` and `row_hash`, links
-- of a hash chain per tenant and stream (`audit`: rbac_audit + approvals; `events`:
-- execution_events), computed by a BEFORE trigger in the same transaction as the row.
--
-- row_hash = sha256(prev_hash || LF || audit_content(row)), hex; the first link's prev_hash is
-- 64 zeros. `seq` is not hashed (so a reorder shows as a broken link, not an edit) but must
-- count up by one. The chain's head (last seq and hash) is one row per chain, upserted by each
-- link: the upsert locks it until commit, so two writers can never fork a chain.
--
-- `audit_gaps` explains seqs with no row: an approval's superseded version (the row moved to
-- the head when its decisions changed) or a range deleted by `opsconductor prune`; each gap
-- records the hash before it and its last hash, so the chain still links across it.
-- `audit_checkpoints` holds signed (SSH) statements "chain X had seq N with hash H, and these
-- gaps": they catch a truncated tail, a rewritten chain and a forged prune.
--
-- Trigger functions are SECURITY DEFINER: a writer needs INSERT on the audited table only,
-- never any right on heads, gaps or checkpoints. Idempotent: safe to apply twice.

CREATE TABLE IF NOT EXISTS execution.audit_chain_heads (
  tenant      text NOT NULL,
  stream      text NOT NULL CHECK (stream IN ('audit', 'events')),
  seq         bigint NOT NULL,
  prev_hash   text NOT NULL,
  hash        text NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (tenant, stream)
);

CREATE TABLE IF NOT EXISTS execution.audit_gaps (
  id          bigserial PRIMARY KEY,
  tenant      text NOT NULL,
  stream      text NOT NULL,
  from_seq    bigint NOT NULL,
  to_seq      bigint NOT NULL CHECK (to_seq >= from_seq),
  prev_hash   text NOT NULL,     -- the hash the first missing row linked to
  last_hash   text NOT NULL,     -- the row_hash of the last missing row
  reason      text NOT NULL CHECK (reason IN ('superseded', 'pruned')),
  ref         text NOT NULL DEFAULT '',
  created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS audit_gaps_chain_idx ON execution.audit_gaps (tenant, stream, from_seq);

CREATE TABLE IF NOT EXISTS execution.audit_checkpoints (
  id              bigserial PRIMARY KEY,
  tenant          text NOT NULL,
  stream          text NOT NULL,
  seq             bigint NOT NULL,
  hash            text NOT NULL,
  gaps_through    bigint NOT NULL DEFAULT 0,   -- the chain's gaps with id <= this are covered
  gaps_digest     text NOT NULL,
  kind            text NOT NULL CHECK (kind IN ('manual', 'prune', 'scheduled')),
  message         text NOT NULL,               -- the canonical JSON that was signed
  signature       text NOT NULL,
  key_fingerprint text NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS audit_checkpoints_chain_idx
  ON execution.audit_checkpoints (tenant, stream, seq);

ALTER TABLE execution.rbac_audit ADD COLUMN IF NOT EXISTS seq bigint;
ALTER TABLE execution.rbac_audit ADD COLUMN IF NOT EXISTS prev_hash text;
ALTER TABLE execution.rbac_audit ADD COLUMN IF NOT EXISTS row_hash text;
ALTER TABLE execution.approvals ADD COLUMN IF NOT EXISTS seq bigint;
ALTER TABLE execution.approvals ADD COLUMN IF NOT EXISTS prev_hash text;
ALTER TABLE execution.approvals ADD COLUMN IF NOT EXISTS row_hash text;
ALTER TABLE execution.execution_events ADD COLUMN IF NOT EXISTS seq bigint;
ALTER TABLE execution.execution_events ADD COLUMN IF NOT EXISTS prev_hash text;
ALTER TABLE execution.execution_events ADD COLUMN IF NOT EXISTS row_hash text;
-- no index on seq: verify and prune read whole chains; the hot path maintains no extra index

-- ------------------------------------------------------------------------------ hashing
CREATE OR REPLACE FUNCTION execution.audit_ts(t timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE OR REPLACE FUNCTION execution.audit_hash(prev text, content text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT encode(sha256(convert_to(prev || chr(10) || content, 'UTF8')), 'hex')
$$;

-- The hashed content of a row: every column but the chain's own (and approvals.updated_at,
-- which changes on every idempotent re-write), timestamps in UTC, as jsonb text (one spelling).
CREATE OR REPLACE FUNCTION execution.audit_content(r execution.rbac_audit) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    't', 'rbac_audit', 'id', r.id, 'at', execution.audit_ts(r.at), 'tenant', r.tenant,
    'actor', r.actor, 'roles', to_jsonb(r.roles), 'action', r.action, 'resource', r.resource,
    'tool', r.tool, 'environment', r.environment, 'execution_id', r.execution_id,
    'step_id', r.step_id, 'decision', r.decision, 'rule_id', r.rule_id, 'reason', r.reason,
    'policy_version', r.policy_version)::text
$$;

CREATE OR REPLACE FUNCTION execution.audit_content(r execution.approvals) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    't', 'approvals', 'id', r.id, 'execution_id', r.execution_id::text, 'gate', r.gate,
    'plan_hash', r.plan_hash, 'state', r.state::text,
    'required_approvals', r.required_approvals, 'required_role', r.required_role,
    'senior_role', r.senior_role, 'requested_at', execution.audit_ts(r.requested_at),
    'expires_at', execution.audit_ts(r.expires_at), 'decided_at', execution.audit_ts(r.decided_at),
    'decisions', r.decisions)::text
$$;

CREATE OR REPLACE FUNCTION execution.audit_content(r execution.execution_events) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    't', 'execution_events', 'id', r.id, 'execution_id', r.execution_id::text,
    'event_key', r.event_key, 'event_type', r.event_type, 'step_id', r.step_id,
    'from_status', r.from_status, 'to_status', r.to_status, 'actor', r.actor,
    'message', r.message, 'data', r.data, 'created_at', execution.audit_ts(r.created_at))::text
$$;

-- Append one link to chain (tenant, stream): one upsert of the head, which stays locked to
-- commit. Returns the link's seq, prev_hash and row_hash.
CREATE OR REPLACE FUNCTION execution.audit_link(p_tenant text, p_stream text, p_content text,
  OUT seq bigint, OUT prev_hash text, OUT row_hash text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, execution AS $$
DECLARE
  genesis constant text := repeat('0', 64);
BEGIN
  INSERT INTO execution.audit_chain_heads AS h (tenant, stream, seq, prev_hash, hash)
  VALUES (p_tenant, p_stream, 1, genesis, execution.audit_hash(genesis, p_content))
  ON CONFLICT (tenant, stream) DO UPDATE SET
    seq = h.seq + 1, prev_hash = h.hash,
    hash = execution.audit_hash(h.hash, p_content), updated_at = clock_timestamp()
  RETURNING h.seq, h.prev_hash, h.hash INTO seq, prev_hash, row_hash;
END $$;

-- Lock a chain's head (creating it) before a check that must not race another writer.
CREATE OR REPLACE FUNCTION execution.audit_lock_head(p_tenant text, p_stream text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, execution AS $$
BEGIN
  PERFORM 1 FROM execution.audit_chain_heads
   WHERE tenant = p_tenant AND stream = p_stream FOR UPDATE;
  IF NOT FOUND THEN
    INSERT INTO execution.audit_chain_heads (tenant, stream, seq, prev_hash, hash)
    VALUES (p_tenant, p_stream, 0, repeat('0', 64), repeat('0', 64))
    ON CONFLICT (tenant, stream) DO NOTHING;
    PERFORM 1 FROM execution.audit_chain_heads
     WHERE tenant = p_tenant AND stream = p_stream FOR UPDATE;
  END IF;
END $$;

-- The head of a chain that was locked but never linked starts at seq 0 with a zero hash:
-- audit_link's upsert then continues from it (0 -> 1, prev = zeros = genesis).

-- ------------------------------------------------------------------------------ triggers
CREATE OR REPLACE FUNCTION execution.rbac_audit_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, execution AS $$
DECLARE
  link record;
BEGIN
  SELECT * INTO link FROM execution.audit_link(NEW.tenant, 'audit', execution.audit_content(NEW));
  NEW.seq := link.seq; NEW.prev_hash := link.prev_hash; NEW.row_hash := link.row_hash;
  RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION execution.events_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, execution AS $$
DECLARE
  v_tenant text;
  link record;
BEGIN
  SELECT e.tenant INTO v_tenant FROM execution.executions e
   WHERE e.execution_id = NEW.execution_id;
  IF v_tenant IS NULL THEN
    RETURN NEW;  -- the foreign key refuses the row anyway
  END IF;
  -- ON CONFLICT DO NOTHING would drop the row after this trigger: drop it here, before the
  -- chain advances. Race-free: execution_events_serialise (009, fired first) holds the
  -- execution's advisory lock to commit, so a concurrent duplicate has committed or waits.
  IF EXISTS (SELECT 1 FROM execution.execution_events x
              WHERE x.execution_id = NEW.execution_id AND x.event_key = NEW.event_key) THEN
    RETURN NULL;
  END IF;
  SELECT * INTO link FROM execution.audit_link(v_tenant, 'events', execution.audit_content(NEW));
  NEW.seq := link.seq; NEW.prev_hash := link.prev_hash; NEW.row_hash := link.row_hash;
  RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION execution.approvals_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, execution AS $$
DECLARE
  v_tenant text;
  link record;
BEGIN
  SELECT e.tenant INTO v_tenant FROM execution.executions e
   WHERE e.execution_id = NEW.execution_id;
  IF v_tenant IS NULL THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'INSERT' THEN
    PERFORM execution.audit_lock_head(v_tenant, 'audit');
    IF EXISTS (SELECT 1 FROM execution.approvals x
                WHERE x.execution_id = NEW.execution_id AND x.gate = NEW.gate) THEN
      RETURN NEW;  -- ON CONFLICT DO UPDATE follows: the update links the new version
    END IF;
  ELSE
    NEW.seq := OLD.seq; NEW.prev_hash := OLD.prev_hash; NEW.row_hash := OLD.row_hash;
    IF execution.audit_content(NEW) IS NOT DISTINCT FROM execution.audit_content(OLD) THEN
      RETURN NEW;  -- an idempotent re-write: the same link
    END IF;
    IF OLD.seq IS NOT NULL THEN
      INSERT INTO execution.audit_gaps (tenant, stream, from_seq, to_seq, prev_hash, last_hash,
                                        reason, ref)
      VALUES (v_tenant, 'audit', OLD.seq, OLD.seq, OLD.prev_hash, OLD.row_hash, 'superseded',
              'approvals:' || OLD.id);
    END IF;
  END IF;
  SELECT * INTO link FROM execution.audit_link(v_tenant, 'audit', execution.audit_content(NEW));
  NEW.seq := link.seq; NEW.prev_hash := link.prev_hash; NEW.row_hash := link.row_hash;
  RETURN NEW;
END $$;

-- Rows written before this migration join their chains now, in time order.
DO $$
DECLARE
  r record;
  link record;
BEGIN
  FOR r IN
    SELECT 'rbac_audit' AS tbl, a.id, a.tenant, a.at AS t FROM execution.rbac_audit a
     WHERE a.seq IS NULL
    UNION ALL
    SELECT 'approvals', p.id, e.tenant, p.requested_at FROM execution.approvals p
      JOIN execution.executions e USING (execution_id) WHERE p.seq IS NULL
    UNION ALL
    SELECT 'execution_events', v.id, e.tenant, v.created_at FROM execution.execution_events v
      JOIN execution.executions e USING (execution_id) WHERE v.seq IS NULL
    ORDER BY t, id
  LOOP
    IF r.tbl = 'rbac_audit' THEN
      SELECT l.* INTO link FROM execution.rbac_audit a,
        LATERAL execution.audit_link(r.tenant, 'audit', execution.audit_content(a)) l
       WHERE a.id = r.id;
      UPDATE execution.rbac_audit SET seq = link.seq, prev_hash = link.prev_hash,
             row_hash = link.row_hash WHERE id = r.id;
    ELSIF r.tbl = 'approvals' THEN
      SELECT l.* INTO link FROM execution.approvals a,
        LATERAL execution.audit_link(r.tenant, 'audit', execution.audit_content(a)) l
       WHERE a.id = r.id;
      UPDATE execution.approvals SET seq = link.seq, prev_hash = link.prev_hash,
             row_hash = link.row_hash WHERE id = r.id;
    ELSE
      SELECT l.* INTO link FROM execution.execution_events a,
        LATERAL execution.audit_link(r.tenant, 'events', execution.audit_content(a)) l
       WHERE a.id = r.id;
      UPDATE execution.execution_events SET seq = link.seq, prev_hash = link.prev_hash,
             row_hash = link.row_hash WHERE id = r.id;
    END IF;
  END LOOP;
END $$;

DROP TRIGGER IF EXISTS rbac_audit_zz_chain ON execution.rbac_audit;
CREATE TRIGGER rbac_audit_zz_chain BEFORE INSERT ON execution.rbac_audit
  FOR EACH ROW EXECUTE FUNCTION execution.rbac_audit_chain();
-- named to fire after execution_events_serialise, which draws the id the content includes
DROP TRIGGER IF EXISTS execution_events_zz_chain ON execution.execution_events;
CREATE TRIGGER execution_events_zz_chain BEFORE INSERT ON execution.execution_events
  FOR EACH ROW EXECUTE FUNCTION execution.events_chain();
DROP TRIGGER IF EXISTS approvals_zz_chain ON execution.approvals;
CREATE TRIGGER approvals_zz_chain BEFORE INSERT OR UPDATE ON execution.approvals
  FOR EACH ROW EXECUTE FUNCTION execution.approvals_chain();

-- Only the triggers (running as this schema's owner) link rows: no role may append a link by
-- calling these directly. Prune and checkpoint (the operators' maintenance role) need
-- EXECUTE on audit_lock_head, granted by the deployment's role migration.
REVOKE EXECUTE ON FUNCTION execution.audit_link(text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION execution.audit_lock_head(text, text) FROM PUBLIC;
