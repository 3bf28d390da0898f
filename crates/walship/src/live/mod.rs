//! Live read replicas: a primary (or a follower) serves its changes over HTTP; a
//! follower applies them to a readable copy of the database.
//!
//! - [`frame`]: the stream's wire format.
//! - [`apply`]: applies LTX files to the follower's database, one transaction each.
//! - [`position`]: the follower's position file.
pub mod apply;
pub mod frame;
pub mod position;
