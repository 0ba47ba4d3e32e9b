-- A guarded key registry (safety/signatures.py, docs/audit.md): a key in rbac_signers is
-- trusted only with its attestation, the registering keys-admin's SSH signature over the
-- change (principal, key, time, nonce), verified by every worker when it loads the keys. A
-- row written straight into the table has none and is ignored (and named by `health`).
-- Who added it is kept beside it; every change is also a chained rbac_audit row (tenant '*').
-- Idempotent: safe to apply twice.
ALTER TABLE execution.rbac_signers ADD COLUMN IF NOT EXISTS attestation jsonb;
ALTER TABLE execution.rbac_signers ADD COLUMN IF NOT EXISTS added_by text;
