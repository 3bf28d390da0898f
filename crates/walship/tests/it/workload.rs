//! Python writer scripts (run as separate processes with `Writer::start`).

/// Schema every workload database starts with.
pub const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, w INTEGER, k INTEGER, v BLOB);";

/// Random inserts/updates/deletes with blobs of 10..8000 bytes, some DDL and the app's
/// own PASSIVE/TRUNCATE checkpoints. Args: DB SEED SECONDS WRITER_ID. Prints the
/// number of transactions.
pub const MIXED: &str = r#"
import sqlite3, random, sys, time
db, seed, secs, wid = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
r = random.Random(seed)
c = sqlite3.connect(db, timeout=5, isolation_level=None)
c.execute("PRAGMA busy_timeout=5000")
end = time.time() + secs
n = 0
while time.time() < end:
    c.execute("BEGIN IMMEDIATE")
    for _ in range(r.randint(1, 15)):
        op = r.random()
        if op < 0.5:
            c.execute("INSERT INTO t(w, k, v) VALUES (?, ?, ?)", (wid, r.randint(0, 1000), r.randbytes(r.randint(10, 8000))))
        elif op < 0.75:
            c.execute("UPDATE t SET v = ?, k = k + 1 WHERE id = (SELECT id FROM t WHERE w = ? ORDER BY random() LIMIT 1)",
                      (r.randbytes(r.randint(10, 8000)), wid))
        else:
            c.execute("DELETE FROM t WHERE id IN (SELECT id FROM t WHERE w = ? ORDER BY random() LIMIT ?)", (wid, r.randint(1, 3)))
    c.execute("COMMIT")
    n += 1
    x = r.random()
    if x < 0.03:
        c.execute(f"CREATE INDEX IF NOT EXISTS idx_{wid}_{r.randint(0, 3)} ON t(k, w)")
    elif x < 0.05:
        c.execute(f"DROP INDEX IF EXISTS idx_{wid}_{r.randint(0, 3)}")
    elif x < 0.07:
        name = f"extra_{wid}_{r.randint(0, 5)}"
        c.execute(f"CREATE TABLE IF NOT EXISTS {name}(a INTEGER PRIMARY KEY, b TEXT)")
        c.execute(f"INSERT INTO {name}(b) VALUES (?)", ("x" * r.randint(1, 3000),))
    elif x < 0.08:
        c.execute(f"DROP TABLE IF EXISTS extra_{wid}_{r.randint(0, 5)}")
    elif x < 0.11:
        c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    elif x < 0.13:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    time.sleep(r.random() * 0.01)
c.close()
print(n)
"#;

/// Inserts rows until a file named STOPFILE exists. Args: DB SEED STOPFILE.
pub const UNTIL_STOPPED: &str = r#"
import sqlite3, random, sys, time, os
db, seed, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r = random.Random(seed)
c = sqlite3.connect(db, timeout=10, isolation_level=None)
c.execute("PRAGMA busy_timeout=10000")
while not os.path.exists(stop):
    c.execute("BEGIN IMMEDIATE")
    for _ in range(r.randint(1, 10)):
        if r.random() < 0.8:
            c.execute("INSERT INTO t(w, k, v) VALUES (1, ?, ?)", (r.randint(0, 1000), r.randbytes(r.randint(10, 6000))))
        else:
            c.execute("DELETE FROM t WHERE id = (SELECT id FROM t ORDER BY random() LIMIT 1)")
    c.execute("COMMIT")
    time.sleep(r.random() * 0.005)
c.close()
"#;

/// Inserts as fast as it can for SECONDS, in small transactions. Args: DB SECONDS.
pub const FAST: &str = r#"
import sqlite3, sys, time, os
db, secs = sys.argv[1], float(sys.argv[2])
c = sqlite3.connect(db, timeout=10, isolation_level=None)
c.execute("PRAGMA busy_timeout=10000")
end = time.time() + secs
n = 0
blob = os.urandom(3000)
while time.time() < end:
    c.execute("BEGIN IMMEDIATE")
    for i in range(20):
        c.execute("INSERT INTO t(w, k, v) VALUES (2, ?, ?)", (n, blob))
    c.execute("COMMIT")
    n += 1
c.close()
print(n)
"#;

/// Schema of the bank workload: 100 accounts holding 1000 each, and a transfer log.
pub const BANK_SCHEMA: &str = "
CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
INSERT INTO accounts SELECT i, 1000 FROM n;
CREATE TABLE log(id INTEGER PRIMARY KEY AUTOINCREMENT, a INTEGER, b INTEGER, amount INTEGER, pad BLOB);";

/// Transfers between accounts (the total stays 100000; log ids grow by one per
/// transfer), some with large pads (overflow pages), and the app's own checkpoints.
/// Args: DB SEED SECONDS. Prints the number of transfers.
pub const BANK: &str = r#"
import sqlite3, random, sys, time
db, seed, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
r = random.Random(seed)
c = sqlite3.connect(db, timeout=10, isolation_level=None)
end = time.time() + secs
n = 0
while time.time() < end:
    a, b = r.sample(range(1, 101), 2)
    amount = r.randint(1, 50)
    pad = r.randbytes(r.choice([0, 10, 500, 3000, 20000]) if r.random() < 0.97 else 300000)
    c.execute("BEGIN IMMEDIATE")
    c.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, a))
    c.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, b))
    c.execute("INSERT INTO log(a, b, amount, pad) VALUES (?, ?, ?, ?)", (a, b, amount, pad))
    c.execute("COMMIT")
    n += 1
    if r.random() < 0.01:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    time.sleep(r.random() * 0.004)
c.close()
print(n)
"#;
