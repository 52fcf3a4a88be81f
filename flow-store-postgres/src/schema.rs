//! The versioned schema: the `flow_schema` table holds the version; migration `n` takes a
//! schema from version `n` to `n + 1`, in one transaction with the version's update, under
//! an advisory lock on the schema's name (several workers starting at once: one migrates,
//! the others wait and then find nothing to do). A schema whose version is newer than
//! [`SCHEMA_VERSION`] is refused before anything is written to it.

use tokio_postgres::Client;

use flow_runtime::store::StoreError;

/// The schema version this build writes, and the newest it can read.
pub const SCHEMA_VERSION: u32 = 3;

/// The class of the store's advisory locks (`pg_advisory_xact_lock(class, key)`): the bytes
/// of `flow`. The key is a hash of the schema's name (migrations) or of the schema and a
/// queue's name (claims under a queue's limits).
pub(crate) const LOCK_CLASS: i32 = 0x666c_6f77;

/// The statuses of a run that has not finished, as SQL (the partial indexes and the queries
/// that use them must spell it the same way, for the planner to match them).
macro_rules! unfinished {
    () => {
        "('pending', 'running', 'compensating')"
    };
}

/// The migrations, in order: `MIGRATIONS[n]` takes version `n` to `n + 1`.
///
/// Keys: a run by its id; a step by (run, node, occurrence, item), the item stored as -1
/// outside a map (as the SQLite store does); a compensation entry, a signal and a history
/// entry by (run, seq), `seq` taken from the run's own counter so it is never reused. u64
/// values (fingerprints) are stored as the BIGINT with the same bits; u32 values (occurrence,
/// item, attempt number, retry counters) as BIGINT. Text keys use the `C` collation, so that
/// they sort byte by byte as Rust strings do, whatever the database's locale.
///
/// Every write of the store is one call of a function below, one statement: one round trip,
/// one transaction (the statement's own). They raise the store's errors with SQLSTATEs of
/// class `FL` (see `error.rs`).
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 1: the tables, the views and the functions.
    concat!(
        r#"
CREATE TABLE flow_runs (
    id             TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    workflow       TEXT COLLATE "C" NOT NULL,
    fingerprint    BIGINT NOT NULL,
    input          BYTEA  NOT NULL,
    status         TEXT   NOT NULL CHECK (status IN
                   ('pending', 'running', 'compensating', 'completed', 'failed', 'cancelled')),
    output         BYTEA,
    error          BYTEA,
    created_ms     BIGINT NOT NULL,
    updated_ms     BIGINT NOT NULL,
    next_seq       BIGINT NOT NULL DEFAULT 1,
    -- The random token of the call that created the run: a call sent again after its answer
    -- was lost finds its own run and reports it created.
    create_token   BIGINT,
    queue          TEXT COLLATE "C",
    priority       INT    NOT NULL DEFAULT 0,
    dedup_key      TEXT COLLATE "C",
    not_before_ms  BIGINT NOT NULL DEFAULT 0,
    started_ms     BIGINT,
    lease_worker   TEXT,
    lease_epoch    BIGINT NOT NULL DEFAULT 0,
    lease_until_ms BIGINT
);
-- Listing (both orders, paged by (created_ms, id)), by status, by workflow; resuming.
CREATE INDEX flow_runs_by_created ON flow_runs (created_ms, id);
CREATE INDEX flow_runs_by_status ON flow_runs (status, created_ms, id);
CREATE INDEX flow_runs_by_workflow ON flow_runs (workflow, created_ms, id);
CREATE INDEX flow_runs_unfinished ON flow_runs (created_ms, id) WHERE status IN "#,
        unfinished!(),
        r#";
-- Claims: runs never started, and runs started (to take over), in claim order.
CREATE INDEX flow_runs_fresh ON flow_runs (queue, priority, created_ms, id)
    WHERE queue IS NOT NULL AND started_ms IS NULL AND status IN "#,
        unfinished!(),
        r#";
CREATE INDEX flow_runs_started ON flow_runs (queue, priority, created_ms, id)
    WHERE queue IS NOT NULL AND started_ms IS NOT NULL AND status IN "#,
        unfinished!(),
        r#";
-- A queue's limits: runs under a lease (concurrency), first starts (rate).
CREATE INDEX flow_runs_leased ON flow_runs (queue, lease_until_ms)
    WHERE queue IS NOT NULL AND lease_until_ms IS NOT NULL AND status IN "#,
        unfinished!(),
        r#";
CREATE INDEX flow_runs_starts ON flow_runs (queue, started_ms)
    WHERE queue IS NOT NULL AND started_ms IS NOT NULL;
-- At most one run in flight per deduplication key.
CREATE UNIQUE INDEX flow_runs_dedup ON flow_runs (dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN "#,
        unfinished!(),
        r#";

CREATE TABLE flow_run_nodes (
    run_id      TEXT COLLATE "C" NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    node        TEXT COLLATE "C" NOT NULL,
    fingerprint BIGINT NOT NULL,
    PRIMARY KEY (run_id, node)
);

CREATE TABLE flow_steps (
    run_id         TEXT COLLATE "C" NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    node           TEXT COLLATE "C" NOT NULL,
    occurrence     BIGINT NOT NULL,
    item           BIGINT NOT NULL,
    state          TEXT   NOT NULL CHECK (state IN ('running', 'completed', 'failed')),
    output         BYTEA,
    failure        TEXT,
    retry_counters BIGINT[] NOT NULL DEFAULT '{}',
    wake_at_ms     BIGINT,
    updated_ms     BIGINT NOT NULL,
    -- The random token of the commit, and the seqs it pushed: a commit sent again after its
    -- answer was lost is recognised as the same commit.
    commit_token   BIGINT,
    pushed         BIGINT[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, node, occurrence, item)
);

CREATE TABLE flow_step_attempts (
    run_id      TEXT COLLATE "C" NOT NULL,
    node        TEXT COLLATE "C" NOT NULL,
    occurrence  BIGINT NOT NULL,
    item        BIGINT NOT NULL,
    number      BIGINT NOT NULL,
    started_ms  BIGINT NOT NULL,
    ended_ms    BIGINT,
    failure     TEXT,
    PRIMARY KEY (run_id, node, occurrence, item, number),
    FOREIGN KEY (run_id, node, occurrence, item)
        REFERENCES flow_steps (run_id, node, occurrence, item) ON DELETE CASCADE
);

CREATE TABLE flow_compensations (
    run_id      TEXT COLLATE "C" NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    node        TEXT COLLATE "C" NOT NULL,
    occurrence  BIGINT NOT NULL,
    item        BIGINT NOT NULL,
    undo        BYTEA  NOT NULL,
    status      TEXT   NOT NULL CHECK (status IN ('pending', 'done', 'failed', 'timed_out')),
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE flow_signals (
    run_id      TEXT COLLATE "C" NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    seq         BIGINT  NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    payload     BYTEA   NOT NULL,
    consumed    BOOLEAN NOT NULL DEFAULT false,
    sent_ms     BIGINT  NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX flow_signals_waiting ON flow_signals (run_id, name, seq) WHERE NOT consumed;

CREATE TABLE flow_graphs (
    workflow    TEXT COLLATE "C" NOT NULL,
    fingerprint BIGINT NOT NULL,
    graph       BYTEA  NOT NULL,
    saved_ms    BIGINT NOT NULL,
    PRIMARY KEY (workflow, fingerprint)
);

CREATE TABLE flow_history (
    run_id      TEXT COLLATE "C" NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    at_ms       BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    detail      TEXT   NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- A run as the store reads it: with its nodes' fingerprints, ordered by node key.
CREATE VIEW flow_run_view AS
SELECT r.id, r.workflow, r.fingerprint, r.input, r.status, r.output, r.error,
       r.created_ms, r.updated_ms, r.queue, r.lease_worker, r.lease_epoch, r.lease_until_ms,
       coalesce(n.keys, '{}') AS node_keys, coalesce(n.fingerprints, '{}') AS node_fingerprints
FROM flow_runs r
CROSS JOIN LATERAL (
    SELECT array_agg(rn.node ORDER BY rn.node) AS keys,
           array_agg(rn.fingerprint ORDER BY rn.node) AS fingerprints
    FROM flow_run_nodes rn WHERE rn.run_id = r.id
) n;

-- A step as the store reads it: with its attempts, by number.
CREATE VIEW flow_step_view AS
SELECT s.run_id, s.node, s.occurrence, s.item, s.state, s.output, s.failure,
       s.retry_counters, s.wake_at_ms, s.updated_ms,
       coalesce(a.numbers, '{}') AS attempt_numbers,
       coalesce(a.started, '{}') AS attempt_started,
       coalesce(a.ended, '{}') AS attempt_ended,
       coalesce(a.failures, '{}') AS attempt_failures
FROM flow_steps s
CROSS JOIN LATERAL (
    SELECT array_agg(t.number ORDER BY t.number) AS numbers,
           array_agg(t.started_ms ORDER BY t.number) AS started,
           array_agg(t.ended_ms ORDER BY t.number) AS ended,
           array_agg(t.failure ORDER BY t.number) AS failures
    FROM flow_step_attempts t
    WHERE t.run_id = s.run_id AND t.node = s.node AND t.occurrence = s.occurrence
      AND t.item = s.item
) a;

-- Every time the store takes: the database server's clock, one clock for every worker.
CREATE FUNCTION flow_now_ms() RETURNS BIGINT LANGUAGE sql VOLATILE AS
$$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- Wakes the workers waiting for work on queue p_queue (at commit).
CREATE FUNCTION flow_notify(p_queue TEXT) RETURNS void LANGUAGE sql VOLATILE AS
$$ SELECT pg_notify('flow_work', current_schema() || ':' || p_queue) $$;

CREATE FUNCTION flow_step_name(p_run TEXT, p_node TEXT, p_occurrence BIGINT, p_item BIGINT)
RETURNS TEXT LANGUAGE sql IMMUTABLE AS
$$ SELECT p_run || '/' || p_node || '@' || p_occurrence
          || CASE WHEN p_item >= 0 THEN '[' || p_item || ']' ELSE '' END $$;

-- Checks that run p_run exists (else FLNF0) and, when p_epoch is given, that the run is
-- queued and its lease epoch is still p_epoch (else FLLL0). A fenced check locks the run's
-- row until the transaction ends (FOR SHARE, or FOR NO KEY UPDATE when the write updates
-- the row anyway), so no claim can move the epoch before the write commits.
CREATE FUNCTION flow_check_run(p_run TEXT, p_epoch BIGINT, p_update BOOLEAN)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_queue TEXT;
    v_epoch BIGINT;
BEGIN
    IF p_epoch IS NULL THEN
        PERFORM 1 FROM flow_runs WHERE id = p_run;
    ELSIF p_update THEN
        SELECT queue, lease_epoch INTO v_queue, v_epoch FROM flow_runs WHERE id = p_run
            FOR NO KEY UPDATE;
    ELSE
        SELECT queue, lease_epoch INTO v_queue, v_epoch FROM flow_runs WHERE id = p_run
            FOR SHARE;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FLNF0', MESSAGE = format('run %s', p_run);
    END IF;
    IF p_epoch IS NOT NULL AND (v_queue IS NULL OR v_epoch <> p_epoch) THEN
        RAISE EXCEPTION USING ERRCODE = 'FLLL0',
            MESSAGE = format('the lease of run %s (epoch %s) was taken over', p_run, p_epoch);
    END IF;
END $$;

-- Creates a run (queued when p_queue is given), or returns the one with that id.
CREATE FUNCTION flow_create_run(
    p_id TEXT, p_workflow TEXT, p_fingerprint BIGINT, p_nodes TEXT[], p_fingerprints BIGINT[],
    p_input BYTEA, p_token BIGINT, p_queue TEXT, p_priority INT, p_dedup TEXT,
    p_not_before BIGINT)
RETURNS TABLE (out_created BOOLEAN, out_run flow_run_view) LANGUAGE plpgsql AS $$
DECLARE
    v_now   BIGINT := flow_now_ms();
    v_other TEXT;
    v_token BIGINT;
BEGIN
    IF p_dedup IS NOT NULL THEN
        SELECT r.id INTO v_other FROM flow_runs r
        WHERE r.dedup_key = p_dedup AND r.status IN "#,
        unfinished!(),
        r#" AND r.id <> p_id LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'FLDP0', DETAIL = v_other,
                MESSAGE = format('a run with deduplication key %s is in flight already: %s',
                                 p_dedup, v_other);
        END IF;
    END IF;
    -- Any unique key decides, also between processes: the id, or the deduplication key.
    INSERT INTO flow_runs (id, workflow, fingerprint, input, status, created_ms, updated_ms,
                           create_token, queue, priority, dedup_key, not_before_ms)
    VALUES (p_id, p_workflow, p_fingerprint, p_input, 'pending', v_now, v_now, p_token,
            p_queue, coalesce(p_priority, 0), p_dedup, coalesce(p_not_before, 0))
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        INSERT INTO flow_run_nodes (run_id, node, fingerprint)
        SELECT p_id, u.node, u.fingerprint FROM unnest(p_nodes, p_fingerprints) AS u(node, fingerprint);
        IF p_queue IS NOT NULL THEN
            PERFORM flow_notify(p_queue);
        END IF;
        RETURN QUERY SELECT true, v FROM flow_run_view v WHERE v.id = p_id;
        RETURN;
    END IF;
    SELECT r.create_token INTO v_token FROM flow_runs r WHERE r.id = p_id;
    IF FOUND THEN
        RETURN QUERY SELECT v_token = p_token, v FROM flow_run_view v WHERE v.id = p_id;
        RETURN;
    END IF;
    -- Another run took the deduplication key in the meantime.
    SELECT r.id INTO v_other FROM flow_runs r
    WHERE r.dedup_key = p_dedup AND r.status IN "#,
        unfinished!(),
        r#" LIMIT 1;
    RAISE EXCEPTION USING ERRCODE = 'FLDP0', DETAIL = coalesce(v_other, ''),
        MESSAGE = format('a run with deduplication key %s is in flight already: %s',
                         p_dedup, coalesce(v_other, 'another run'));
END $$;

CREATE FUNCTION flow_set_status(p_id TEXT, p_status TEXT, p_result BYTEA, p_epoch BIGINT)
RETURNS SETOF flow_run_view LANGUAGE plpgsql AS $$
DECLARE
    v_finished BOOLEAN := p_status IN ('completed', 'failed', 'cancelled');
    v_status   TEXT;
    v_queue    TEXT;
BEGIN
    IF p_epoch IS NOT NULL THEN
        PERFORM flow_check_run(p_id, p_epoch, true);
    END IF;
    IF p_result IS NOT NULL AND NOT v_finished THEN
        RAISE EXCEPTION USING ERRCODE = 'FLIV0',
            MESSAGE = format('a result given with status %s, which has none', p_status);
    END IF;
    SELECT r.status, r.queue INTO v_status, v_queue FROM flow_runs r WHERE r.id = p_id
        FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FLNF0', MESSAGE = format('run %s', p_id);
    END IF;
    IF v_status IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION USING ERRCODE = 'FLCF0',
            MESSAGE = format('run %s is %s: its status cannot become %s', p_id, v_status, p_status);
    END IF;
    -- A finished run's lease ends with it.
    UPDATE flow_runs r SET
        status = p_status,
        output = CASE WHEN p_status = 'completed' THEN p_result END,
        error = CASE WHEN p_status = 'completed' THEN NULL ELSE p_result END,
        updated_ms = greatest(flow_now_ms(), r.created_ms),
        lease_worker = CASE WHEN v_finished THEN NULL ELSE r.lease_worker END,
        lease_until_ms = CASE WHEN v_finished THEN NULL ELSE r.lease_until_ms END
    WHERE r.id = p_id;
    IF v_finished AND v_queue IS NOT NULL THEN
        PERFORM flow_notify(v_queue);
    END IF;
    RETURN QUERY SELECT * FROM flow_run_view v WHERE v.id = p_id;
END $$;

-- Records attempts (replacing those with the same numbers; the last of a number wins).
CREATE FUNCTION flow_put_attempts(
    p_run TEXT, p_node TEXT, p_occurrence BIGINT, p_item BIGINT,
    p_numbers BIGINT[], p_started BIGINT[], p_ended BIGINT[], p_failures TEXT[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(cardinality(p_numbers), 0) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO flow_step_attempts AS t
        (run_id, node, occurrence, item, number, started_ms, ended_ms, failure)
    SELECT DISTINCT ON (a.number) p_run, p_node, p_occurrence, p_item, a.number, a.started,
           a.ended, a.failure
    FROM unnest(p_numbers, p_started, p_ended, p_failures) WITH ORDINALITY
         AS a(number, started, ended, failure, ord)
    ORDER BY a.number, a.ord DESC
    ON CONFLICT (run_id, node, occurrence, item, number) DO UPDATE SET
        started_ms = excluded.started_ms, ended_ms = excluded.ended_ms,
        failure = excluded.failure;
END $$;

-- Applies compensation changes in order (parallel arrays, one element per change); any
-- failure raises, and the whole transaction is rolled back. Returns the pushed seqs.
CREATE FUNCTION flow_apply_compensations(
    p_run TEXT, p_ops TEXT[], p_nodes TEXT[], p_occurrences BIGINT[], p_items BIGINT[],
    p_undos BYTEA[], p_seqs BIGINT[], p_statuses TEXT[], p_now BIGINT)
RETURNS BIGINT[] LANGUAGE plpgsql AS $$
DECLARE
    v_pushed BIGINT[] := '{}';
    v_seq    BIGINT;
    v_status TEXT;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_ops), 0) LOOP
        CASE p_ops[i]
        WHEN 'push' THEN
            UPDATE flow_runs SET next_seq = next_seq + 1 WHERE id = p_run
                RETURNING next_seq - 1 INTO v_seq;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'FLNF0', MESSAGE = format('run %s', p_run);
            END IF;
            INSERT INTO flow_compensations
                (run_id, seq, node, occurrence, item, undo, status, updated_ms)
            VALUES (p_run, v_seq, p_nodes[i], p_occurrences[i], p_items[i], p_undos[i],
                    'pending', p_now);
            v_pushed := v_pushed || v_seq;
        WHEN 'drop' THEN
            DELETE FROM flow_compensations WHERE run_id = p_run AND seq = p_seqs[i]
                RETURNING status INTO v_status;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'FLNF0',
                    MESSAGE = format('compensation %s#%s', p_run, p_seqs[i]);
            END IF;
            IF v_status <> 'pending' THEN
                RAISE EXCEPTION USING ERRCODE = 'FLCF0',
                    MESSAGE = format('compensation %s#%s is %s: only a pending one can be dropped',
                                     p_run, p_seqs[i], v_status);
            END IF;
        WHEN 'mark' THEN
            UPDATE flow_compensations SET status = p_statuses[i], updated_ms = p_now
                WHERE run_id = p_run AND seq = p_seqs[i];
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'FLNF0',
                    MESSAGE = format('compensation %s#%s', p_run, p_seqs[i]);
            END IF;
        ELSE
            RAISE EXCEPTION USING ERRCODE = 'FLIV0',
                MESSAGE = format('unknown compensation change %L', p_ops[i]);
        END CASE;
    END LOOP;
    RETURN v_pushed;
END $$;

CREATE FUNCTION flow_update_compensations(
    p_run TEXT, p_ops TEXT[], p_nodes TEXT[], p_occurrences BIGINT[], p_items BIGINT[],
    p_undos BYTEA[], p_seqs BIGINT[], p_statuses TEXT[], p_epoch BIGINT)
RETURNS BIGINT[] LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flow_check_run(p_run, p_epoch, 'push' = ANY (p_ops));
    RETURN flow_apply_compensations(p_run, p_ops, p_nodes, p_occurrences, p_items, p_undos,
                                    p_seqs, p_statuses, flow_now_ms());
END $$;

CREATE FUNCTION flow_save_progress(
    p_run TEXT, p_node TEXT, p_occurrence BIGINT, p_item BIGINT, p_counters BIGINT[],
    p_wake BIGINT, p_number BIGINT, p_started BIGINT, p_ended BIGINT, p_failure TEXT,
    p_epoch BIGINT)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flow_check_run(p_run, p_epoch, false);
    INSERT INTO flow_steps AS s
        (run_id, node, occurrence, item, state, retry_counters, wake_at_ms, updated_ms)
    VALUES (p_run, p_node, p_occurrence, p_item, 'running', p_counters, p_wake, flow_now_ms())
    ON CONFLICT (run_id, node, occurrence, item) DO UPDATE SET
        retry_counters = excluded.retry_counters,
        wake_at_ms = excluded.wake_at_ms,
        updated_ms = excluded.updated_ms
    WHERE s.state = 'running';
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FLCF0',
            MESSAGE = format('step %s is already committed',
                             flow_step_name(p_run, p_node, p_occurrence, p_item));
    END IF;
    IF p_number IS NOT NULL THEN
        PERFORM flow_put_attempts(p_run, p_node, p_occurrence, p_item, ARRAY[p_number],
                                  ARRAY[p_started], ARRAY[p_ended], ARRAY[p_failure]);
    END IF;
END $$;

-- Commits a step: the first commit of a key wins; later ones change nothing and get it back
-- (out_first false), unless they carry the first one's token (the same call, sent again).
CREATE FUNCTION flow_commit_step(
    p_run TEXT, p_node TEXT, p_occurrence BIGINT, p_item BIGINT,
    p_state TEXT, p_output BYTEA, p_failure TEXT,
    p_numbers BIGINT[], p_started BIGINT[], p_ended BIGINT[], p_failures TEXT[],
    p_ops TEXT[], p_op_nodes TEXT[], p_op_occurrences BIGINT[], p_op_items BIGINT[],
    p_op_undos BYTEA[], p_op_seqs BIGINT[], p_op_statuses TEXT[],
    p_epoch BIGINT, p_token BIGINT)
RETURNS TABLE (out_first BOOLEAN, out_pushed BIGINT[], out_step flow_step_view)
LANGUAGE plpgsql AS $$
DECLARE
    v_now    BIGINT := flow_now_ms();
    v_state  TEXT;
    v_token  BIGINT;
    v_pushed BIGINT[] := '{}';
BEGIN
    PERFORM flow_check_run(p_run, p_epoch, 'push' = ANY (p_ops));
    INSERT INTO flow_steps (run_id, node, occurrence, item, state, output, failure,
                            updated_ms, commit_token)
    VALUES (p_run, p_node, p_occurrence, p_item, p_state, p_output, p_failure, v_now, p_token)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT s.state, s.commit_token, s.pushed INTO v_state, v_token, v_pushed
        FROM flow_steps s
        WHERE s.run_id = p_run AND s.node = p_node AND s.occurrence = p_occurrence
          AND s.item = p_item
        FOR UPDATE;
        IF NOT FOUND THEN
            -- Deleted (reset) between the insert and the read: the client runs it again.
            RAISE EXCEPTION USING ERRCODE = '40001',
                MESSAGE = 'the step changed during its commit';
        END IF;
        IF v_state <> 'running' THEN
            RETURN QUERY SELECT v_token = p_token,
                CASE WHEN v_token = p_token THEN v_pushed ELSE '{}'::BIGINT[] END, v
            FROM flow_step_view v
            WHERE v.run_id = p_run AND v.node = p_node AND v.occurrence = p_occurrence
              AND v.item = p_item;
            RETURN;
        END IF;
        UPDATE flow_steps s SET state = p_state, output = p_output, failure = p_failure,
            wake_at_ms = NULL, updated_ms = v_now, commit_token = p_token
        WHERE s.run_id = p_run AND s.node = p_node AND s.occurrence = p_occurrence
          AND s.item = p_item;
    END IF;
    IF coalesce(cardinality(p_ops), 0) > 0 THEN
        v_pushed := flow_apply_compensations(p_run, p_ops, p_op_nodes, p_op_occurrences,
                                             p_op_items, p_op_undos, p_op_seqs, p_op_statuses,
                                             v_now);
        IF cardinality(v_pushed) > 0 THEN
            UPDATE flow_steps s SET pushed = v_pushed
            WHERE s.run_id = p_run AND s.node = p_node AND s.occurrence = p_occurrence
              AND s.item = p_item;
        END IF;
    END IF;
    PERFORM flow_put_attempts(p_run, p_node, p_occurrence, p_item, p_numbers, p_started,
                              p_ended, p_failures);
    RETURN QUERY SELECT true, v_pushed, v FROM flow_step_view v
    WHERE v.run_id = p_run AND v.node = p_node AND v.occurrence = p_occurrence
      AND v.item = p_item;
END $$;

CREATE FUNCTION flow_send_signal(p_run TEXT, p_name TEXT, p_payload BYTEA)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_seq BIGINT;
BEGIN
    UPDATE flow_runs SET next_seq = next_seq + 1 WHERE id = p_run
        RETURNING next_seq - 1 INTO v_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FLNF0', MESSAGE = format('run %s', p_run);
    END IF;
    INSERT INTO flow_signals (run_id, seq, name, payload, sent_ms)
    VALUES (p_run, v_seq, p_name, p_payload, flow_now_ms());
    RETURN v_seq;
END $$;

-- Takes the oldest signal not taken (skipping those another transaction is taking).
CREATE FUNCTION flow_take_signal(p_run TEXT, p_name TEXT, p_epoch BIGINT)
RETURNS TABLE (out_seq BIGINT, out_payload BYTEA) LANGUAGE plpgsql AS $$
BEGIN
    IF p_epoch IS NOT NULL THEN
        PERFORM flow_check_run(p_run, p_epoch, false);
    END IF;
    RETURN QUERY
    UPDATE flow_signals g SET consumed = true
    WHERE g.run_id = p_run AND g.seq = (
        SELECT s.seq FROM flow_signals s
        WHERE s.run_id = p_run AND s.name = p_name AND NOT s.consumed
        ORDER BY s.seq LIMIT 1
        FOR UPDATE SKIP LOCKED)
    RETURNING g.seq, g.payload;
END $$;

CREATE FUNCTION flow_take_signal_into_step(
    p_run TEXT, p_name TEXT, p_node TEXT, p_occurrence BIGINT, p_item BIGINT, p_epoch BIGINT)
RETURNS TABLE (out_seq BIGINT, out_payload BYTEA) LANGUAGE plpgsql AS $$
DECLARE
    v_state   TEXT;
    v_seq     BIGINT;
    v_payload BYTEA;
BEGIN
    PERFORM flow_check_run(p_run, p_epoch, false);
    SELECT s.state INTO v_state FROM flow_steps s
    WHERE s.run_id = p_run AND s.node = p_node AND s.occurrence = p_occurrence
      AND s.item = p_item
    FOR UPDATE;
    IF FOUND AND v_state <> 'running' THEN
        RETURN;
    END IF;
    UPDATE flow_signals g SET consumed = true
    WHERE g.run_id = p_run AND g.seq = (
        SELECT s.seq FROM flow_signals s
        WHERE s.run_id = p_run AND s.name = p_name AND NOT s.consumed
        ORDER BY s.seq LIMIT 1
        FOR UPDATE SKIP LOCKED)
    RETURNING g.seq, g.payload INTO v_seq, v_payload;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO flow_steps AS s (run_id, node, occurrence, item, state, output, updated_ms)
    VALUES (p_run, p_node, p_occurrence, p_item, 'completed', v_payload, flow_now_ms())
    ON CONFLICT (run_id, node, occurrence, item) DO UPDATE SET
        state = 'completed', output = excluded.output, failure = NULL, wake_at_ms = NULL,
        updated_ms = excluded.updated_ms
    WHERE s.state = 'running';
    IF NOT FOUND THEN
        -- Another call committed the step in the meantime: the signal stays where it was.
        UPDATE flow_signals SET consumed = false WHERE run_id = p_run AND seq = v_seq;
        RETURN;
    END IF;
    out_seq := v_seq;
    out_payload := v_payload;
    RETURN NEXT;
END $$;

CREATE FUNCTION flow_reset_steps(p_run TEXT, p_nodes TEXT[])
RETURNS SETOF flow_run_view LANGUAGE plpgsql AS $$
DECLARE
    v_queue TEXT;
    v_steps TEXT[];
BEGIN
    SELECT r.queue INTO v_queue FROM flow_runs r WHERE r.id = p_run FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FLNF0', MESSAGE = format('run %s', p_run);
    END IF;
    -- The nodes' steps and their undos' (node key `<key>~undo`).
    v_steps := p_nodes || ARRAY(SELECT n || '~undo' FROM unnest(p_nodes) AS n);
    DELETE FROM flow_step_attempts WHERE run_id = p_run AND node = ANY (v_steps);
    DELETE FROM flow_steps WHERE run_id = p_run AND node = ANY (v_steps);
    DELETE FROM flow_compensations WHERE run_id = p_run AND node = ANY (p_nodes);
    -- A worker still executing the run is fenced out; the restarted run is claimed afresh.
    UPDATE flow_runs r SET status = 'pending', output = NULL, error = NULL,
        updated_ms = greatest(flow_now_ms(), r.created_ms),
        lease_epoch = r.lease_epoch + CASE WHEN r.queue IS NULL THEN 0 ELSE 1 END,
        lease_worker = NULL, lease_until_ms = NULL
    WHERE r.id = p_run;
    IF v_queue IS NOT NULL THEN
        PERFORM flow_notify(v_queue);
    END IF;
    RETURN QUERY SELECT * FROM flow_run_view v WHERE v.id = p_run;
END $$;

CREATE FUNCTION flow_record_history(p_run TEXT, p_actor TEXT, p_action TEXT, p_detail TEXT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_seq BIGINT;
BEGIN
    UPDATE flow_runs SET next_seq = next_seq + 1 WHERE id = p_run
        RETURNING next_seq - 1 INTO v_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FLNF0', MESSAGE = format('run %s', p_run);
    END IF;
    INSERT INTO flow_history (run_id, seq, at_ms, actor, action, detail)
    VALUES (p_run, v_seq, flow_now_ms(), p_actor, p_action, p_detail);
    RETURN v_seq;
END $$;

-- Leases up to p_max claimable runs of queue p_queue to p_worker. With a limit, claims of
-- the queue are serialized by an advisory lock so that the counts are exact; without one,
-- SKIP LOCKED lets claimers pass each other.
CREATE FUNCTION flow_claim(
    p_queue TEXT, p_worker TEXT, p_max BIGINT, p_lease_ms BIGINT, p_concurrency BIGINT,
    p_rate_starts BIGINT, p_rate_per_ms BIGINT)
RETURNS SETOF flow_run_view LANGUAGE plpgsql AS $$
DECLARE
    v_now   BIGINT;
    v_room  BIGINT := greatest(p_max, 0);
    v_fresh BIGINT;
    v_count BIGINT;
    v_ids   TEXT[];
BEGIN
    IF p_concurrency IS NOT NULL OR p_rate_starts IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock("#,
        "1718382455",
        r#", hashtext(current_schema() || ':queue:' || p_queue));
    END IF;
    v_now := flow_now_ms();
    IF p_concurrency IS NOT NULL THEN
        SELECT count(*) INTO v_count FROM flow_runs r
        WHERE r.queue IS NOT NULL AND r.queue = p_queue AND r.lease_until_ms IS NOT NULL
          AND r.lease_until_ms >= v_now AND r.status IN "#,
        unfinished!(),
        r#";
        v_room := least(v_room, greatest(p_concurrency - v_count, 0));
    END IF;
    v_fresh := v_room;
    IF p_rate_starts IS NOT NULL THEN
        SELECT count(*) INTO v_count FROM flow_runs r
        WHERE r.queue IS NOT NULL AND r.queue = p_queue AND r.started_ms IS NOT NULL
          AND r.started_ms >= v_now - p_rate_per_ms;
        v_fresh := least(v_room, greatest(p_rate_starts - v_count, 0));
    END IF;
    IF v_room = 0 THEN
        RETURN;
    END IF;
    WITH takeover AS (
        SELECT r.id, r.priority, r.created_ms FROM flow_runs r
        WHERE r.queue IS NOT NULL AND r.queue = p_queue AND r.started_ms IS NOT NULL
          AND r.status IN "#,
        unfinished!(),
        r#"
          AND r.not_before_ms <= v_now
          AND (r.lease_until_ms IS NULL OR r.lease_until_ms < v_now)
        ORDER BY r.queue, r.priority, r.created_ms, r.id
        LIMIT v_room
        FOR NO KEY UPDATE SKIP LOCKED
    ), fresh AS (
        SELECT r.id, r.priority, r.created_ms FROM flow_runs r
        WHERE r.queue IS NOT NULL AND r.queue = p_queue AND r.started_ms IS NULL
          AND r.status IN "#,
        unfinished!(),
        r#"
          AND r.not_before_ms <= v_now
          AND (r.lease_until_ms IS NULL OR r.lease_until_ms < v_now)
        ORDER BY r.queue, r.priority, r.created_ms, r.id
        LIMIT v_fresh
        FOR NO KEY UPDATE SKIP LOCKED
    ), picked AS (
        SELECT c.id FROM (SELECT * FROM takeover UNION ALL SELECT * FROM fresh) c
        ORDER BY c.priority, c.created_ms, c.id
        LIMIT v_room
    ), claimed AS (
        UPDATE flow_runs r SET lease_worker = p_worker, lease_epoch = r.lease_epoch + 1,
            lease_until_ms = v_now + p_lease_ms, started_ms = coalesce(r.started_ms, v_now)
        FROM picked WHERE r.id = picked.id
        RETURNING r.id, r.priority, r.created_ms
    )
    SELECT array_agg(c.id ORDER BY c.priority, c.created_ms, c.id) INTO v_ids FROM claimed c;
    RETURN QUERY SELECT v.* FROM unnest(v_ids) WITH ORDINALITY AS u(id, ord)
        JOIN flow_run_view v ON v.id = u.id ORDER BY u.ord;
END $$;

CREATE FUNCTION flow_renew(p_worker TEXT, p_runs TEXT[], p_epochs BIGINT[], p_lease_ms BIGINT)
RETURNS TABLE (out_run TEXT, out_epoch BIGINT) LANGUAGE plpgsql AS $$
DECLARE
    v_now BIGINT := flow_now_ms();
BEGIN
    RETURN QUERY
    UPDATE flow_runs r SET lease_until_ms = v_now + p_lease_ms
    FROM (SELECT DISTINCT u.run, u.epoch FROM unnest(p_runs, p_epochs) AS u(run, epoch)) l
    WHERE r.id = l.run AND r.lease_epoch = l.epoch AND r.lease_worker = p_worker
    RETURNING r.id::TEXT, r.lease_epoch;
END $$;

CREATE FUNCTION flow_release(p_run TEXT, p_epoch BIGINT, p_due BIGINT)
RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    v_queue TEXT;
BEGIN
    UPDATE flow_runs r SET lease_worker = NULL, lease_until_ms = NULL,
        not_before_ms = COALESCE(p_due, r.not_before_ms)
    WHERE r.id = p_run AND r.lease_worker IS NOT NULL AND r.lease_epoch = p_epoch
    RETURNING r.queue INTO v_queue;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM flow_notify(v_queue);
    RETURN true;
END $$;
"#
    ),
    // 2: the batched writes (the client's group commit): commits of many steps, creations of
    // many runs, status changes of many runs, signals of many runs taken, each in one statement.
    r#"
-- Commits many steps, of any runs, in one transaction: the batched form of flow_commit_step
-- for commits that change no compensation (the client sends those one by one). The keys
-- are distinct. Each commit is checked and answered on its own, by its index (1-based): a
-- commit whose run is gone (out_refused FLNF0) or whose lease epoch is stale (FLLL0) writes
-- nothing and does not stop the others; the first commit of a key wins (out_first), later
-- ones change nothing and get it back, unless they carry the first one's token. Attempts
-- are parallel arrays, each with the index of its commit (p_a_commits).
CREATE FUNCTION flow_commit_steps(
    p_runs TEXT[], p_nodes TEXT[], p_occurrences BIGINT[], p_items BIGINT[],
    p_states TEXT[], p_outputs BYTEA[], p_failures TEXT[], p_epochs BIGINT[],
    p_tokens BIGINT[],
    p_a_commits INT[], p_a_numbers BIGINT[], p_a_started BIGINT[], p_a_ended BIGINT[],
    p_a_failures TEXT[])
RETURNS TABLE (out_index BIGINT, out_refused TEXT, out_first BOOLEAN,
               out_step flow_step_view)
-- The statements' plans are made once a connection: left to choose, PostgreSQL plans them
-- again at every call (the arrays' sizes make each custom plan look cheaper than the
-- generic one), which costs more than the statements themselves.
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now     BIGINT := flow_now_ms();
    v_refused TEXT[];
    v_written BIGINT[];
BEGIN
    -- The fenced runs' rows stay locked (in id order: batches do not deadlock each other)
    -- until the commit, so that no claim moves an epoch checked here.
    -- Every lookup below is by key, a row at a time (a scalar subquery, or a lateral one
    -- that locks): the arrays are small, the tables large, and the plans are made once, maybe
    -- while the tables were small (a join could keep a sequential scan).
    PERFORM 1
    FROM (SELECT DISTINCT u.run FROM unnest(p_runs, p_epochs) AS u(run, epoch)
          WHERE u.epoch IS NOT NULL ORDER BY u.run) f
    CROSS JOIN LATERAL (SELECT 1 FROM flow_runs r WHERE r.id = f.run FOR SHARE) l;
    SELECT array_agg(nullif(coalesce(
               (SELECT CASE WHEN u.epoch IS NOT NULL
                                 AND (r.queue IS NULL OR r.lease_epoch <> u.epoch)
                            THEN 'FLLL0' ELSE '' END
                FROM flow_runs r WHERE r.id = u.run),
               'FLNF0'), '') ORDER BY u.i)
    INTO v_refused
    FROM unnest(p_runs, p_epochs) WITH ORDINALITY AS u(run, epoch, i);
    -- A new step, or one with progress saved ('running'): written now. A committed one
    -- stays as it is.
    WITH written AS (
        INSERT INTO flow_steps AS s (run_id, node, occurrence, item, state, output, failure,
                                     updated_ms, commit_token)
        SELECT u.run, u.node, u.occurrence, u.item, u.state, u.output, u.failure, v_now,
               u.token
        FROM unnest(p_runs, p_nodes, p_occurrences, p_items, p_states, p_outputs,
                    p_failures, p_tokens) WITH ORDINALITY
             AS u(run, node, occurrence, item, state, output, failure, token, i)
        WHERE v_refused[u.i] IS NULL
        ON CONFLICT (run_id, node, occurrence, item) DO UPDATE SET
            state = excluded.state, output = excluded.output, failure = excluded.failure,
            wake_at_ms = NULL, updated_ms = excluded.updated_ms,
            commit_token = excluded.commit_token
        WHERE s.state = 'running'
        RETURNING s.run_id, s.node, s.occurrence, s.item
    )
    SELECT coalesce(array_agg(u.i), '{}') INTO v_written
    FROM written w
    JOIN unnest(p_runs, p_nodes, p_occurrences, p_items) WITH ORDINALITY
         AS u(run, node, occurrence, item, i)
      ON (w.run_id, w.node, w.occurrence, w.item) = (u.run, u.node, u.occurrence, u.item);
    -- The attempts of the commits written (the last of a number wins).
    INSERT INTO flow_step_attempts AS t
        (run_id, node, occurrence, item, number, started_ms, ended_ms, failure)
    SELECT DISTINCT ON (a.c, a.number) p_runs[a.c], p_nodes[a.c], p_occurrences[a.c],
           p_items[a.c], a.number, a.started, a.ended, a.failure
    FROM unnest(p_a_commits, p_a_numbers, p_a_started, p_a_ended, p_a_failures)
         WITH ORDINALITY AS a(c, number, started, ended, failure, ord)
    WHERE a.c = ANY (v_written)
    ORDER BY a.c, a.number, a.ord DESC
    ON CONFLICT (run_id, node, occurrence, item, number) DO UPDATE SET
        started_ms = excluded.started_ms, ended_ms = excluded.ended_ms,
        failure = excluded.failure;
    RETURN QUERY
    SELECT u.i, v_refused[u.i],
           CASE WHEN v_refused[u.i] IS NOT NULL THEN NULL
                WHEN u.i = ANY (v_written) THEN true
                ELSE coalesce((SELECT s.commit_token = u.token FROM flow_steps s
                               WHERE s.run_id = u.run AND s.node = u.node
                                 AND s.occurrence = u.occurrence AND s.item = u.item),
                              false) END,
           CASE WHEN v_refused[u.i] IS NULL THEN
               (SELECT v FROM flow_step_view v
                WHERE v.run_id = u.run AND v.node = u.node AND v.occurrence = u.occurrence
                  AND v.item = u.item) END
    FROM unnest(p_runs, p_nodes, p_occurrences, p_items, p_tokens) WITH ORDINALITY
         AS u(run, node, occurrence, item, token, i)
    ORDER BY u.i;
END $$;

-- Creates many runs (queued when their queue is given), none with a deduplication key, in
-- one transaction: the batched form of flow_create_run. The ids are distinct. A run whose id
-- is taken is not created: out_created says whether it is this call's (its token). Node
-- fingerprints are parallel arrays, each with the index (1-based) of its run.
CREATE FUNCTION flow_create_runs(
    p_ids TEXT[], p_workflows TEXT[], p_fingerprints BIGINT[], p_inputs BYTEA[],
    p_tokens BIGINT[], p_queues TEXT[], p_priorities INT[], p_not_before BIGINT[],
    p_n_runs INT[], p_n_nodes TEXT[], p_n_fingerprints BIGINT[])
RETURNS TABLE (out_index BIGINT, out_created BOOLEAN, out_run flow_run_view)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now     BIGINT := flow_now_ms();
    v_created BIGINT[];
BEGIN
    WITH inserted AS (
        INSERT INTO flow_runs (id, workflow, fingerprint, input, status, created_ms,
                               updated_ms, create_token, queue, priority, not_before_ms)
        SELECT u.id, u.workflow, u.fingerprint, u.input, 'pending', v_now, v_now, u.token,
               u.queue, u.priority, u.not_before
        FROM unnest(p_ids, p_workflows, p_fingerprints, p_inputs, p_tokens, p_queues,
                    p_priorities, p_not_before)
             AS u(id, workflow, fingerprint, input, token, queue, priority, not_before)
        ON CONFLICT DO NOTHING
        RETURNING id
    )
    SELECT coalesce(array_agg(u.i), '{}') INTO v_created
    FROM inserted w JOIN unnest(p_ids) WITH ORDINALITY AS u(id, i) ON u.id = w.id;
    INSERT INTO flow_run_nodes (run_id, node, fingerprint)
    SELECT p_ids[n.r], n.node, n.fingerprint
    FROM unnest(p_n_runs, p_n_nodes, p_n_fingerprints) AS n(r, node, fingerprint)
    WHERE n.r = ANY (v_created);
    PERFORM flow_notify(q.queue)
    FROM (SELECT DISTINCT p_queues[c] AS queue FROM unnest(v_created) AS c) q
    WHERE q.queue IS NOT NULL;
    RETURN QUERY
    SELECT u.i,
           u.i = ANY (v_created)
               OR coalesce((SELECT r.create_token = u.token FROM flow_runs r
                            WHERE r.id = u.id), false),
           (SELECT v FROM flow_run_view v WHERE v.id = u.id)
    FROM unnest(p_ids, p_tokens) WITH ORDINALITY AS u(id, token, i)
    ORDER BY u.i;
END $$;

-- Sets the status of many runs in one transaction: the batched form of flow_set_status,
-- for changes that give no result with an unfinished status. The ids are distinct. Each
-- change is checked and answered on its own (out_refused: FLNF0 the run is gone, FLLL0 its
-- lease epoch is stale, 'FLCF0:<status>' it is finished already), with the run as it is
-- after the transaction.
CREATE FUNCTION flow_set_statuses(
    p_ids TEXT[], p_statuses TEXT[], p_results BYTEA[], p_epochs BIGINT[])
RETURNS TABLE (out_index BIGINT, out_refused TEXT, out_run flow_run_view)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now     BIGINT := flow_now_ms();
    v_refused TEXT[];
    v_queue   TEXT;
    v_done    BOOLEAN;
BEGIN
    -- The runs' rows, locked in id order (batches do not deadlock each other), a row at a
    -- time by key (see flow_commit_steps).
    PERFORM 1
    FROM (SELECT DISTINCT u.id FROM unnest(p_ids) AS u(id) ORDER BY u.id) f
    CROSS JOIN LATERAL (SELECT 1 FROM flow_runs r WHERE r.id = f.id FOR NO KEY UPDATE) l;
    SELECT array_agg(nullif(coalesce(
               (SELECT CASE
                    WHEN u.epoch IS NOT NULL AND (r.queue IS NULL OR r.lease_epoch <> u.epoch)
                        THEN 'FLLL0'
                    WHEN r.status IN ('completed', 'failed', 'cancelled')
                        THEN 'FLCF0:' || r.status
                    ELSE '' END
                FROM flow_runs r WHERE r.id = u.id),
               'FLNF0'), '') ORDER BY u.i)
    INTO v_refused
    FROM unnest(p_ids, p_epochs) WITH ORDINALITY AS u(id, epoch, i);
    FOR i IN 1 .. cardinality(p_ids) LOOP
        CONTINUE WHEN v_refused[i] IS NOT NULL;
        v_done := p_statuses[i] IN ('completed', 'failed', 'cancelled');
        -- A finished run's lease ends with it.
        UPDATE flow_runs r SET
            status = p_statuses[i],
            output = CASE WHEN p_statuses[i] = 'completed' THEN p_results[i] END,
            error = CASE WHEN p_statuses[i] = 'completed' THEN NULL ELSE p_results[i] END,
            updated_ms = greatest(v_now, r.created_ms),
            lease_worker = CASE WHEN v_done THEN NULL ELSE r.lease_worker END,
            lease_until_ms = CASE WHEN v_done THEN NULL ELSE r.lease_until_ms END
        WHERE r.id = p_ids[i]
        RETURNING r.queue INTO v_queue;
        IF v_done AND v_queue IS NOT NULL THEN
            PERFORM flow_notify(v_queue);
        END IF;
    END LOOP;
    RETURN QUERY
    SELECT u.i, v_refused[u.i], (SELECT v FROM flow_run_view v WHERE v.id = u.id)
    FROM unnest(p_ids) WITH ORDINALITY AS u(id, i)
    ORDER BY u.i;
END $$;

-- Takes, for each (run, name), the oldest waiting signal of that name, in one transaction:
-- the batched form of flow_take_signal. The pairs are distinct. A fenced take (its epoch
-- given) whose run is gone (out_refused FLNF0) or whose epoch is stale (FLLL0) takes
-- nothing; out_seq is NULL when no signal waits.
CREATE FUNCTION flow_take_signals(p_runs TEXT[], p_names TEXT[], p_epochs BIGINT[])
RETURNS TABLE (out_index BIGINT, out_refused TEXT, out_seq BIGINT, out_payload BYTEA)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_refused  TEXT[];
    v_seqs     BIGINT[] := '{}';
    v_payloads BYTEA[] := '{}';
    v_seq      BIGINT;
    v_payload  BYTEA;
BEGIN
    -- As in flow_commit_steps: the fenced runs' rows locked in id order, a row at a time.
    PERFORM 1
    FROM (SELECT DISTINCT u.run FROM unnest(p_runs, p_epochs) AS u(run, epoch)
          WHERE u.epoch IS NOT NULL ORDER BY u.run) f
    CROSS JOIN LATERAL (SELECT 1 FROM flow_runs r WHERE r.id = f.run FOR SHARE) l;
    SELECT array_agg(CASE WHEN u.epoch IS NULL THEN NULL ELSE nullif(coalesce(
               (SELECT CASE WHEN r.queue IS NULL OR r.lease_epoch <> u.epoch
                            THEN 'FLLL0' ELSE '' END
                FROM flow_runs r WHERE r.id = u.run),
               'FLNF0'), '') END ORDER BY u.i)
    INTO v_refused
    FROM unnest(p_runs, p_epochs) WITH ORDINALITY AS u(run, epoch, i);
    FOR i IN 1 .. cardinality(p_runs) LOOP
        v_seqs[i] := NULL;
        v_payloads[i] := NULL;
        CONTINUE WHEN v_refused[i] IS NOT NULL;
        UPDATE flow_signals g SET consumed = true
        WHERE g.run_id = p_runs[i] AND g.seq = (
            SELECT s.seq FROM flow_signals s
            WHERE s.run_id = p_runs[i] AND s.name = p_names[i] AND NOT s.consumed
            ORDER BY s.seq LIMIT 1
            FOR UPDATE SKIP LOCKED)
        RETURNING g.seq, g.payload INTO v_seq, v_payload;
        IF FOUND THEN
            v_seqs[i] := v_seq;
            v_payloads[i] := v_payload;
        END IF;
    END LOOP;
    RETURN QUERY
    SELECT u.i::BIGINT, v_refused[u.i], v_seqs[u.i], v_payloads[u.i]
    FROM generate_series(1, cardinality(p_runs)) AS u(i)
    ORDER BY u.i;
END $$;
"#,
    // 3: an index that lists one workflow's runs of one status in order, and statistics of
    // the pairs (workflow, status) for the planner. Without the index a list filtered by both
    // read one filter's index and dropped the rows of the other: with 12,500 cancelled runs
    // of one workflow and one of another, the page of the other's cancelled runs read all
    // 12,500 (2.3 ms at 100,000 runs, where a page takes 0.2 ms). Without the statistics the
    // planner takes the two filters for independent, expects a page's runs to come early in
    // the status's index, and keeps reading it (the same 2.3 ms); with them (once ANALYZE or
    // autovacuum has run) it knows that pair is rare and reads the new index (0.05 ms).
    r#"
CREATE INDEX flow_runs_by_workflow_status ON flow_runs (workflow, status, created_ms, id);
CREATE STATISTICS flow_runs_workflow_status (mcv) ON workflow, status FROM flow_runs;
"#,
];

/// What [`check_version`] found.
pub(crate) enum Found {
    /// No `flow_schema` table (a new schema, or one that does not exist yet).
    Nothing,
    /// The schema's version (at most [`SCHEMA_VERSION`]).
    Version(u32),
}

/// The schema's version without writing anything: refuses a newer one, and a schema that
/// has flow's tables but no `flow_schema` (damaged, or another program's).
pub(crate) async fn check_version(
    client: &Client,
    schema: &str,
    server: &str,
) -> Result<Found, StoreError> {
    let row = client
        .query_one(
            // From the catalog's tables with this statement's snapshot, not from the
            // server's caches: inside the migration's transaction, after waiting for the
            // advisory lock, this sees the tables that another starter has just created.
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables
                            WHERE schemaname = $1 AND tablename = 'flow_schema'),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_tables
                            WHERE schemaname = $1 AND tablename = 'flow_runs')",
            &[&schema],
        )
        .await
        .map_err(|e| crate::error::store_error(&e, server))?;
    let (has_schema, has_runs): (bool, bool) =
        (crate::rows::get_at(&row, 0)?, crate::rows::get_at(&row, 1)?);
    if !has_schema {
        if has_runs {
            return Err(StoreError::Corrupt {
                what: format!(
                    "schema {schema} has a `flow_runs` table but no `flow_schema`: it is not a \
                     flow store"
                ),
            });
        }
        return Ok(Found::Nothing);
    }
    let version = read_version(client, schema, server).await?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(Found::Version(version))
}

async fn read_version(client: &Client, schema: &str, server: &str) -> Result<u32, StoreError> {
    let sql = format!(
        "SELECT version FROM {}.flow_schema WHERE id = 1",
        quote_ident(schema)
    );
    let row = client
        .query_opt(sql.as_str(), &[])
        .await
        .map_err(|e| crate::error::store_error(&e, server))?;
    let version: i64 = match &row {
        Some(row) => crate::rows::get_at(row, 0)?,
        None => 0,
    };
    u32::try_from(version).map_err(|_| StoreError::Corrupt {
        what: format!("schema version {version} is out of range"),
    })
}

/// `name` as an SQL identifier, quoted.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates schema `schema` if it is missing and applies the missing migrations, in order,
/// one transaction each, under the schema's advisory lock.
pub(crate) async fn migrate(client: &Client, schema: &str, server: &str) -> Result<(), StoreError> {
    migrate_to(client, schema, server, SCHEMA_VERSION).await
}

/// [`migrate`] up to version `target` only (at most [`SCHEMA_VERSION`]).
pub(crate) async fn migrate_to(
    client: &Client,
    schema: &str,
    server: &str,
    target: u32,
) -> Result<(), StoreError> {
    let target = target.min(SCHEMA_VERSION);
    loop {
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| crate::error::store_error(&e, server))?;
        match migrate_step(client, schema, server, target).await {
            Ok(done) => {
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| crate::error::store_error(&e, server))?;
                if done {
                    return Ok(());
                }
            }
            Err(e) => {
                // Nothing of the step stays; a connection that is gone is dropped by the pool.
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
    }
}

/// One step of [`migrate_to`], inside its transaction: `true` when the schema is at `target`
/// (nothing was changed), `false` after a migration.
async fn migrate_step(
    client: &Client,
    schema: &str,
    server: &str,
    target: u32,
) -> Result<bool, StoreError> {
    let quoted = quote_ident(schema);
    client
        .execute(
            "SELECT pg_advisory_xact_lock($1, hashtext('schema:' || $2::text))",
            &[&LOCK_CLASS, &schema],
        )
        .await
        .map_err(|e| crate::error::store_error(&e, server))?;
    // Under the lock: the schema and the version table are created once, and the version
    // read here is the one every other starter sees after us.
    let version = match check_version(client, schema, server).await? {
        Found::Version(version) => version,
        Found::Nothing => {
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {quoted};
                     CREATE TABLE {quoted}.flow_schema (
                         id      INT    NOT NULL PRIMARY KEY CHECK (id = 1),
                         version BIGINT NOT NULL
                     );
                     INSERT INTO {quoted}.flow_schema (id, version) VALUES (1, 0);"
                ))
                .await
                .map_err(|e| crate::error::store_error(&e, server))?;
            0
        }
    };
    if version >= target {
        return Ok(true);
    }
    let Some(sql) = MIGRATIONS.get(version as usize) else {
        return Err(StoreError::Backend {
            message: format!("no migration from schema version {version}"),
        });
    };
    // The migration's objects go to the schema whatever the connection's search_path.
    client
        .batch_execute(&format!("SET LOCAL search_path TO {quoted}; {sql}"))
        .await
        .map_err(|e| crate::error::store_error(&e, server))?;
    client
        .execute(
            &format!("UPDATE {quoted}.flow_schema SET version = $1 WHERE id = 1"),
            &[&i64::from(version + 1)],
        )
        .await
        .map_err(|e| crate::error::store_error(&e, server))?;
    Ok(false)
}
