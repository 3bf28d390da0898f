// Fuzz body for the live-replica stream, shared by the `stream_frames` fuzz target and
// the regression replay in `crates/walship/tests/it/fuzz_replay.rs`.

use std::io::Read;

/// `stream_frames`: the follower's frame reader over arbitrary bytes; every LTX frame is
/// applied to a scratch replica. Must not panic; a frame that fails to apply must leave
/// the replica's position unchanged, and the reader never yields more than the input.
pub fn stream_frames(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!("walship-fuzz-stream-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let db = dir.join("replica.db");
    for suffix in ["", "-wal", "-shm", ".position"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let position = walship::live::position::PositionFile::new(dir.join("replica.db.position"));
    let Ok(mut replica) = walship::live::apply::ReplicaDb::open(&db, position) else { return };
    let mut frames = walship::live::frame::FrameReader::new(data);
    let mut consumed = 0u64;
    for _ in 0..64 {
        match frames.next_frame() {
            Ok(Some(walship::live::frame::Frame::Heartbeat(_))) => consumed += 41,
            Ok(Some(walship::live::frame::Frame::Ltx(mut body))) => {
                let limit = body.limit();
                let before = replica.pos();
                let mut counted = Counted { r: &mut body, n: 0 };
                if replica.apply(&mut counted, "fuzz", None).is_err() {
                    assert_eq!(replica.pos(), before, "a failed apply moved the position");
                }
                let n = counted.n;
                consumed += 9 + n;
                // Skip what the decoder left of the frame, as the follower's next read would.
                let mut rest = Vec::new();
                let _ = body.read_to_end(&mut rest);
                assert!(n + rest.len() as u64 <= limit);
                consumed += rest.len() as u64;
            }
            Ok(None) | Err(_) => break,
        }
        assert!(consumed <= data.len() as u64, "read past the input");
    }
}

struct Counted<'a, R: Read> {
    r: &'a mut R,
    n: u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}
